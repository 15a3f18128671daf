"""Shared pieces of the saekit workbench pages, imported as the top-level package `components` (the app
directory is first on sys.path): cached loaders and the run selection (`state`), plotly figures (`plots`),
tables with one number format and clickable latent rows (`tables`), the latent card (`latent_card`),
labels and notes (`notes`), card export (`export`), steering views (`steer_views`), token heat-maps
(`heatmap`), and the method-study section of Compare (`study`).

    from components import state, plots
    run = state.selected_run()
"""
