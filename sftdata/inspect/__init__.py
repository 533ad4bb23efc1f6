"""Inspection of a finished build: `view`, `diff`, `stats` and `report`, on one read model.

    build_data.py   BuildData: manifest, rejects and every document's tokens and mask (the read model)
    vocab.py        token ids to readable pieces, through the build's tokenizer
    alignment.py    how two masks over a document differ (diff, and the report against its baseline)
    terminal.py     terminal drawing shared by view and diff; opening builds for a command
    charts.py       distributions as inline SVG
    page.py         the self-contained HTML page (static/report.js and report.css are package data)
    view.py, diff.py, stats.py, report.py   the commands, each with add_parser and run
    commands.py     registers the four commands with the `sftdata` command line
    verify.py       `sftdata verify`: a finished build re-checked in full against its manifest (a CI gate)
"""
