"""The bank side of federated training: pure maths, no transport and no crypto.

Federated histogram GBDT (XGBoost ``binary:logistic`` semantics), in the order a run uses it:

* :mod:`.params`: :class:`~.params.GBDTParams`;
* :mod:`.binning`: consortium-fixed fine grid, per-bank grid counts, global cuts, bin indices;
* :mod:`.objective`: float32 logistic gradients bit-identical to XGBoost's;
* :mod:`.sampling`: row and column samples from shared seeds;
* :mod:`.histogram`: per-node gradient histograms, their flat payload layout, sibling subtraction;
* :mod:`.split`: best split per node with XGBoost's gain and constraints;
* :mod:`.tree`, :mod:`.ensemble`: the model; :mod:`.xgb_export`: XGBoost JSON;
* :mod:`.grower` (shared, identical on every bank) and :mod:`.party` (one bank's side) of a
  level-wise tree round; :mod:`.local_booster`: the plaintext reference protocol.
"""
