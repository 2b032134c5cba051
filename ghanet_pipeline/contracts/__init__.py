"""Records that cross a stage boundary, as frozen dataclasses with one writer and one reader each.

``base.Record`` gives every record ``to_attrs()`` (what is written: a JSON-able dict with the
record's ``record_version``) and ``from_attrs(attrs, source=...)`` (what is read: checked, typed).
One module per boundary: ``tiles`` (tissue -> features, infer, report), ``features`` (features ->
train, infer, report), ``training`` (train -> summarize, infer, report). ``docs/contracts.md``
lists every field; ``tests/test_contracts.py`` keeps the two in step.
"""
