"""Integrity of the image cache: checksums of base files, recorded and compared (with
their first read and, where it can be asked, with Glance), and a quarantine for corrupt
bases nobody uses.

The service calls `verify.verify_some(settings, pass_, limit)` once per pass; the plan and
the metrics read `state.corrupt_in_use(db)`; `cache verify` is `verify.verify`.
"""
