"""Gradio UI of LLaCA Studio: layout, event handlers, dashboard views. No torch or SQL here.

Modules: ``build`` (layout, wiring, launch options), ``chat`` (ask/regenerate/undo/clear/stop),
``feedback`` (likes, corrections, teach), ``panels`` (this session's buffer panel),
``dashboard`` (versions, matrix, groups, rollback), ``review`` (the admin's review queue),
``forgetting`` (forgetting an author or a correction), ``teaching`` (authors and the teaching
policy), ``quotas`` (per-author limits), ``api`` (named endpoints for gradio_client),
``history`` (the one chat-history normaliser), ``state`` (per-session gr.State), ``services``
(store + live assistant + stop events), ``answers`` (answers in flight, stored once),
``lifecycle`` (port check, bounded shutdown), ``file_access`` (who may read an upload),
``examples`` (synthetic-world example images), ``errors`` (exceptions -> user messages).
"""

from .build import build_app, launch_kwargs
from .services import Services, create_services

__all__ = ["Services", "build_app", "create_services", "launch_kwargs"]
