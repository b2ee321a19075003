"""The bank node's scoring service: the risk team's REST endpoint (``fedfraud bank serve``)."""
