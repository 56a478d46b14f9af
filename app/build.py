"""Layout and event wiring of the LLaCA Studio app (``build_app``) and its launch options.

Tabs: **Chat** (chatbot + multimodal textbox, Stop/Regenerate/Undo/Clear, parameters,
examples; on the right the correction box and this session's buffer panel) and **Learning
dashboard** (admin password, adapter versions, accuracy matrix, forgetting, instruction groups
(their names and authors for the admin only), the review queue, forgetting an author and rollback). On a Space a "Sign in with
Hugging Face" button names the author of a signed-in user's corrections. The named API
endpoints are ``gr.api`` functions without components (``app.api``). Events that run the model share
one ``concurrency_id`` ("model") and the limit from settings; store-only events are not
limited; Stop bypasses the queue.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from .api import ApiHandlers
from .chat import ChatHandlers
from .dashboard import (
    ADMIN_DISABLED,
    ADMIN_ENABLED,
    BASE_CHOICE,
    GROUP_HEADERS,
    TABLE_HEADERS,
    Dashboard,
)
from .feedback import BOX_PLACEHOLDER, PICK_ANSWER, FeedbackHandlers
from .forgetting import ForgetHandlers
from .panels import Panels
from .review import REVIEW_HEADERS, ReviewHandlers
from .services import Services
from .state import SessionState

log = logging.getLogger(__name__)

MODEL_GROUP = "model"
TITLE = "LLaCA Studio"
INTRO = (
    "Ask about an image. If an answer is wrong, give it a 👎 and type the right one "
    "(or edit the answer in place). Your corrections collect in this session's buffer; "
    "the learning worker turns them into a new adapter version that keeps what it knew."
)
CHAT_PLACEHOLDER = "**Upload or paste an image and ask about it.**<br>Try an example below. Every answer can be rated and corrected."
CSS = """
#llaca-header h1 {margin-bottom: 0}
.llaca-badge {display:inline-block; padding:1px 8px; border-radius:10px; font-size:0.85em; margin-left:6px; background:#e5e7eb; color:#111}
.llaca-open {background:#e0e7ff} .llaca-ready {background:#fef3c7} .llaca-training {background:#dbeafe}
.llaca-promoted {background:#dcfce7} .llaca-rejected {background:#fee2e2}
.llaca-buffer {border:1px solid var(--border-color-primary); border-radius:8px; padding:8px; margin-bottom:8px}
.llaca-buffer progress {width:100%}
.llaca-items {width:100%; font-size:0.9em; border-collapse:collapse}
.llaca-items td, .llaca-items th {padding:2px 4px; text-align:left; vertical-align:middle}
.llaca-items img {border-radius:4px; image-rendering:pixelated}
.llaca-chip {display:inline-block; margin:1px 3px; padding:0 6px; border-radius:8px; background:var(--background-fill-secondary)}
.llaca-ledger {font-size:0.85em; margin-bottom:6px}
.llaca-empty {color:var(--body-text-color-subdued); font-size:0.9em}
"""


def launch_kwargs(services: Services) -> dict[str, Any]:
    """Options for ``demo.launch`` (Gradio 6: theme and css belong here, not in Blocks)."""
    from . import file_access

    s = services.settings
    return {
        "server_name": s.host,
        "server_port": s.port,
        "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="slate"),
        "css": CSS,
        "show_error": True,
        "allowed_paths": [str((s.data_dir / "examples").absolute())],
        "max_file_size": "25mb",
        # uploads are served only under an unguessable per-upload path (app/file_access.py);
        # no static-file worker processes, which would serve the temp dir around that check
        "app_kwargs": {"middleware": [file_access.middleware()]},
        "num_workers": 0,
    }


def build_app(services: Services) -> gr.Blocks:
    """The whole UI and API, wired to ``services``. Call ``.queue()`` and ``.launch()`` on it."""
    s = services.settings
    chat, fb, panels, api = ChatHandlers(services), FeedbackHandlers(services), Panels(services), ApiHandlers(services)
    dash, review, forget = Dashboard(services), ReviewHandlers(services, panels.thumbs), ForgetHandlers(services)
    model_limits = {"concurrency_id": MODEL_GROUP, "concurrency_limit": s.concurrency}
    light = {"concurrency_limit": None, "api_visibility": "private"}
    # UI events are private; the named endpoints are gr.api functions (app.api.ApiHandlers.register)

    with gr.Blocks(title=TITLE, fill_width=True) as demo:
        state = gr.State(SessionState())
        with gr.Row(elem_id="llaca-header"):
            gr.Markdown(f"# 🦙 {TITLE}\n{INTRO}")
            if s.on_space:  # Sign in with Hugging Face (hf_oauth: true): corrections then carry your user name
                gr.LoginButton(size="sm", scale=0, min_width=180)
        status_md = gr.Markdown(panels.status_line(), elem_id="llaca-status")

        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=420):
                        chatbot = gr.Chatbot(
                            label="Chat", elem_id="llaca-chat", height=540, editable="all",
                            feedback_options=("Like", "Dislike"), placeholder=CHAT_PLACEHOLDER,
                            buttons=["copy"], group_consecutive_messages=False,
                        )
                        box = gr.MultimodalTextbox(
                            file_types=["image"], file_count="single", sources=["upload"], show_label=False,
                            placeholder="Upload or paste an image, then ask about it…", elem_id="llaca-box",
                        )
                        with gr.Row():
                            stop_btn = gr.Button("⏹ Stop", variant="stop", size="sm", elem_id="llaca-stop")
                            regen_btn = gr.Button("🔄 Regenerate", size="sm")
                            undo_btn = gr.Button("↩️ Undo", size="sm")
                            clear_btn = gr.Button("🗑️ Clear", size="sm")
                        with gr.Accordion("Parameters", open=False):
                            temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, label="Temperature", elem_id="llaca-temperature")
                            top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, label="Top P")
                            max_tokens = gr.Slider(1, s.max_new_tokens, value=min(512, s.max_new_tokens), step=1,
                                                   label="Max new tokens")
                        if services.examples:
                            gr.Examples(
                                examples=[[{"text": e.question, "files": [str(e.path)]}] for e in services.examples],
                                inputs=[box], label="Examples (the synthetic world the tiny model knows)",
                                examples_per_page=8,
                            )
                    with gr.Column(scale=2, min_width=320):
                        with gr.Group():
                            gr.Markdown("### ✏️ Correct this answer", padding=True)
                            selection_md = gr.Markdown(PICK_ANSWER, padding=True, elem_id="llaca-selection")
                            correction = gr.Textbox(
                                show_label=False, placeholder=BOX_PLACEHOLDER, lines=2, elem_id="llaca-correction",
                            )
                            # the store id of the answer the box is tied to, sent with every save
                            correction_target = gr.Textbox(visible=False, elem_id="llaca-correction-target")
                            save_btn = gr.Button("Save correction", variant="primary", elem_id="llaca-save")
                        ack_md = gr.Markdown("", elem_id="llaca-ack")
                        gr.Markdown("### 🎓 This session's buffer")
                        teach_btn = gr.Button("Teach now", elem_id="llaca-teach")
                        panel = gr.HTML(elem_id="llaca-panel")

            with gr.Tab("Learning dashboard", id="dashboard") as dash_tab:
                with gr.Group():
                    gr.Markdown(ADMIN_ENABLED if s.admin_enabled else ADMIN_DISABLED, padding=True, elem_id="llaca-admin-note")
                    with gr.Row():
                        password = gr.Textbox(label="Admin password", type="password", interactive=s.admin_enabled,
                                              elem_id="llaca-admin-password", scale=3)
                        unlock_btn = gr.Button("Unlock admin views", size="sm", scale=1, interactive=s.admin_enabled)
                dash_summary = gr.Markdown(elem_id="llaca-dash-summary")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS, interactive=False, wrap=True, label="Adapter versions", elem_id="llaca-adapters",
                    column_widths=["7%", "8%", "7%", "12%", "7%", "9%", "7%", "43%"],
                )
                with gr.Row():
                    with gr.Column():
                        version_pick = gr.Dropdown(label="Accuracy matrix of version", choices=[], interactive=True)
                        matrix_plot = gr.Plot(label="Accuracy matrix", show_label=False, elem_id="llaca-matrix")
                    with gr.Column():
                        forgetting_plot = gr.Plot(label="Forgetting per version", show_label=False, elem_id="llaca-forgetting")
                groups_table = gr.Dataframe(
                    headers=GROUP_HEADERS, interactive=False, wrap=True, elem_id="llaca-groups",
                    label="Instruction groups of this version (llaca+groups): questions are routed to their group's adapter",
                )
                with gr.Group(elem_id="llaca-review"):
                    gr.Markdown(f"### Review queue (teaching policy: **{s.teach}**)", padding=True)
                    review_line = gr.Markdown("🔒 Enter the admin password to see corrections waiting for review.",
                                              padding=True, elem_id="llaca-review-line")
                    review_table = gr.Dataframe(
                        headers=REVIEW_HEADERS, interactive=False, wrap=True, elem_id="llaca-review-table",
                        datatype=["number", "html", "str", "str", "str", "str", "str", "str", "str"],
                    )
                    with gr.Row():
                        review_ids = gr.Textbox(label="Correction ids (comma-separated)", scale=2, elem_id="llaca-review-ids")
                        review_author = gr.Dropdown(label="…or every pending one of this author", choices=[], scale=2,
                                                    elem_id="llaca-review-author")
                        review_reason = gr.Textbox(label="Reason (shown to the author when rejected)", scale=2)
                    with gr.Row():
                        approve_btn = gr.Button("Approve", variant="primary", size="sm", elem_id="llaca-approve")
                        reject_btn = gr.Button("Reject", variant="stop", size="sm", elem_id="llaca-reject")
                    review_msg = gr.Markdown(elem_id="llaca-review-msg")
                with gr.Group(elem_id="llaca-forget"):
                    gr.Markdown("### Forget an author: their corrections, questions and images are deleted, and the "
                                "groups they taught are served without them at once, then retrained from what others "
                                "taught", padding=True)
                    with gr.Row():
                        forget_author = gr.Dropdown(label="Author", choices=[], scale=3, elem_id="llaca-forget-author")
                        forget_btn = gr.Button("Forget this author", variant="stop", size="sm", scale=1,
                                               interactive=s.admin_enabled, elem_id="llaca-forget-btn")
                    forget_msg = gr.Markdown(elem_id="llaca-forget-msg")
                with gr.Group():
                    gr.Markdown("### Rollback", padding=True)
                    with gr.Row():
                        rollback_pick = gr.Dropdown(label="Serve this version", choices=[BASE_CHOICE], interactive=s.admin_enabled)
                    rollback_btn = gr.Button("Roll back", variant="stop", interactive=s.admin_enabled)
                rollback_msg = gr.Markdown(elem_id="llaca-rollback-msg")
                refresh_btn = gr.Button("Refresh", size="sm")

        params = [temperature, top_p, max_tokens]

        def after(history, st: SessionState, target: str, request: gr.Request = None):
            status, body = panels.refresh(st, request)
            return (*fb.sync(history, st, target), status, body)

        after_kw = dict(fn=after, inputs=[chatbot, state, correction_target],
                        outputs=[selection_md, correction, correction_target, status_md, panel], **light, show_progress="hidden")

        # -- named API endpoints (gradio_client) ------------------------------------------
        api.register(model_limits)  # /ask /rate /correct /teach /status /stop: gr.api, typed by signature
        # the review queue's endpoints: typed by their signatures, no components (admin password first)
        gr.api(review.pending, api_name="pending", concurrency_limit=None)
        gr.api(review.approve, api_name="approve", concurrency_limit=None)
        gr.api(review.reject, api_name="reject", concurrency_limit=None)
        gr.api(forget.forget, api_name="forget", concurrency_limit=None)
        gr.api(forget.forget_correction, api_name="forget_correction", concurrency_limit=None)

        # -- chat -------------------------------------------------------------------------
        box.submit(
            chat.submit, [box, chatbot, state, *params], [box, chatbot, state],
            show_progress="minimal", api_visibility="private", **model_limits,
        ).then(**after_kw)
        gr.on(
            [chatbot.retry, regen_btn.click], chat.retry, [chatbot, state, *params], [chatbot, state],
            show_progress="minimal", api_visibility="private", **model_limits,
        ).then(**after_kw)
        gr.on([chatbot.undo, undo_btn.click], chat.undo, [chatbot, state], [box, chatbot, state], **light).then(**after_kw)
        gr.on([chatbot.clear, clear_btn.click], chat.clear, [state], [chatbot, state, box], **light).then(
            lambda: "", None, [ack_md], **light).then(**after_kw)
        stop_btn.click(chat.stop, [state], None, queue=False, api_visibility="private")

        # -- feedback ---------------------------------------------------------------------
        chatbot.like(  # every click counts, even in quick succession on several answers
            fb.like, [chatbot, state, correction_target], [state, selection_md, correction, correction_target, ack_md],
            trigger_mode="multiple", **light,
        ).then(**after_kw)
        chatbot.select(
            fb.select, [chatbot, state, correction_target], [state, selection_md, correction, correction_target, ack_md],
            trigger_mode="always_last", **light, show_progress="hidden",
        )
        chatbot.edit(fb.edit, [chatbot, state], [chatbot, state, ack_md], **light).then(
            chat.reask, [chatbot, state, *params], [chatbot, state], show_progress="minimal",
            api_visibility="private", **model_limits,
        ).then(**after_kw)
        gr.on(
            [save_btn.click, correction.submit], fb.save_correction, [correction, correction_target, chatbot, state],
            [correction, chatbot, state, ack_md], **light,
        ).then(**after_kw)
        teach_btn.click(fb.teach, [state], [ack_md], **light).then(**after_kw)

        # -- status polling and dashboard -------------------------------------------------
        timer = gr.Timer(s.poll_seconds)
        timer.tick(panels.poll, [state], [status_md, panel], show_progress="hidden", **light)
        dash_outputs = [dash_summary, table, matrix_plot, forgetting_plot, version_pick, rollback_pick, groups_table]
        demo.load(panels.refresh, [state], [status_md, panel], **light, show_progress="hidden")
        gr.on([dash_tab.select, refresh_btn.click, unlock_btn.click, password.submit], dash.dashboard,
              [version_pick, password], dash_outputs, **light).then(
            lambda pw: review.table(pw)[0::2], [password], [review_table, review_line], **light)
        version_pick.input(dash.matrix_for, [version_pick, password], [matrix_plot, groups_table], **light)
        rollback_btn.click(dash.rollback, [rollback_pick, password, version_pick], [rollback_msg, *dash_outputs], **light)
        gr.on([unlock_btn.click, password.submit, dash_tab.select, refresh_btn.click],
              lambda pw: gr.update(choices=review.table(pw)[1], value=None), [password], [review_author], **light)
        gr.on([unlock_btn.click, password.submit, dash_tab.select, refresh_btn.click], forget.authors, [password],
              [forget_author], **light)
        forget_btn.click(forget.button, [password, forget_author], [forget_msg], **light).then(
            forget.authors, [password], [forget_author], **light)
        review_outputs = [review_msg, review_table, review_author, review_line]
        approve_btn.click(lambda pw, ids, who, why: review.act("approve", pw, ids, who, why),
                          [password, review_ids, review_author, review_reason], review_outputs, **light)
        reject_btn.click(lambda pw, ids, who, why: review.act("reject", pw, ids, who, why),
                         [password, review_ids, review_author, review_reason], review_outputs, **light)

        def on_unload(request: gr.Request):
            services.stops.stop(getattr(request, "session_hash", "") or "")
            panels.forget(request)
            api.sessions.forget(request)

        demo.unload(on_unload)

    return demo
