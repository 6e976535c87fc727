"""Analysis of finished runs: plots (:mod:`revjax.analysis.plots`) and the report card
(:mod:`revjax.analysis.report`, ``revjax report``)."""
