"""Attacks in torch: batched, seeded, with an explicit optional box and no implicit clamp.

Every l_p attack has the signature
``attack(model, x, y, *, eps, norm, box=None, generator=None, **params) -> x_adv``
and returns, per point, an input within ``eps`` of ``x`` (and inside ``box``).
"""
