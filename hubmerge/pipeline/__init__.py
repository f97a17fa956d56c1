"""Whole jobs, strung from the parts below: plan -> read -> merge -> write -> card (-> push).

``run`` is one merge end to end, ``stages`` a multi-stage recipe, ``card`` the card as a job writes it,
``push`` / ``parts`` / ``sync`` publish to the Hub, ``verify`` reproduces and checks what a card records.
Only evolve/, commands/ and the wrappers import this package.
"""
