"""Troubleshooting from logs: `trace` follows one resource id through the OpenStack
services' oslo.log files; `diagnose` recognises known failures in them.

Modules, one job each: `sources` (which files, their service, host and time zone),
`reader` (bytes of a plain or gzip file, streamed), `records` (the oslo.log line format),
`scan` (finding needles in big chunks, in parallel), `trace` (following request ids),
`findings` (gaps in a trace, as the field's procedure reads them), `diagnose` (the
knowledge base in `signatures.toml`), `render` (text and JSON), `commands` (the CLI).
"""
