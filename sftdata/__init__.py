"""sftdata: exact per-token loss masks for supervised fine-tuning data.

Data flows one way:
    sources (files -> raw records) -> formats (record -> Conversation)
    -> spans (Conversation -> Rendered: text + character regions per message)
    -> masking (Rendered + token offsets -> Document: ids, loss mask, verified)
    -> truncation -> packing -> shards (Arrow files + manifest)
"""

__version__ = "0.1.0"
