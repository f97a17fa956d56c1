"""Input models: references resolved to local folders or Hub commits, tensors read without trusting headers.

``open.open_model`` opens any reference. Hub repos are read through the client the caller passes in
(``hub_model.HubReads``: the Hub facade in ``hubmerge.hub`` is one); sources/ never imports ``hubmerge.hub``.
"""
