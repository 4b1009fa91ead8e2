"""Checkpoint-only gates: what a checkpoint alone can show, in seconds, without any dataset.

* :mod:`.parity`: our model against the reference implementation on the probe set;
* :mod:`.example`: the README's API example through the public API, against published probabilities;
* :mod:`.golden`: probe features against ones recorded earlier (same model, precision, device kind).

Everything works on :class:`~qaclip_harness.gates.features.FeatureSource` objects, so any backend
behind the :class:`~qaclip_harness.backends.base.Encoder` interface can be gated the same way.
"""
