"""Shared pieces of the saekit workbench pages: cached loaders (`state`), token heat-maps (`heatmap`) and
plotly figure builders (`plots`). Imported as the top-level package `components` (the app directory is
first on sys.path).

    from components import state, plots
    run = state.selected_run()
"""
