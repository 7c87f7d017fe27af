"""AutoJudge (Garipov et al., 2025): a learned judge of which draft/target mismatches matter.

``mining`` labels mismatches by whether substituting the draft token changes the final
answer, ``classifier`` fits a logistic regression (or a small MLP) on hidden states,
``cache`` stores trained judges under a key of everything that determines them, and
:mod:`specbench.methods.autojudge` decodes with one.
"""
