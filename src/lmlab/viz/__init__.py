"""Plots (matplotlib, the ``viz`` extra): loss curves (:mod:`.curves`), confusion matrices
(:mod:`.confusion`), curves of runs (:mod:`.run_plots`), embedding maps (:mod:`.embedding_map`,
PNG or a self-contained HTML page) and next-token probabilities (:mod:`.probability_plots`);
:mod:`.numbers` writes the numbers a figure drew beside it as JSON."""
