"""The machinery of the trained box heads (``adapter``, ``grounding``): the UNet feature
pyramid (``features``), the detector (``detector``, with ``matching`` for its set losses), and
reading and writing trained weights (``weights``)."""
