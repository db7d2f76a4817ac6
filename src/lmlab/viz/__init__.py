"""Plots (matplotlib, the ``viz`` extra): loss curves (:mod:`.curves`) and confusion matrices (:mod:`.confusion`)."""
