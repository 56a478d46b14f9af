"""The chat, feedback and panel handlers called directly (no server) on the tiny model.

They cover what the browser does that ``gradio_client`` cannot: streaming into the chatbot,
thumbs on any answer, edits in place (answer = correction, question = ask again),
Regenerate, Undo, Clear, and a model failure that keeps the question.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gradio as gr
import pytest
import torch

from app.history import corrected_message
from tests.conftest import TINY

MODEL = Path(os.environ.get("LLACA_TEST_MODEL", TINY))
COLOR_Q = "What color is the shape?"
SHAPE_Q = "What shape is this?"


@pytest.fixture(scope="module")
def services(tmp_path_factory, request):
    from app.services import create_services
    from llaca.config.settings import Settings
    from llaca.model.llava import load_model

    torch.set_num_threads(1)
    lm = request.getfixturevalue("tiny") if MODEL == TINY else load_model(MODEL, device="cpu")
    settings = Settings(model=str(MODEL), data_dir=tmp_path_factory.mktemp("handlers") / "data", device="cpu",
                        buffer_size=2, admin_password="pw")
    svc = create_services(settings, lm=lm)
    yield svc
    svc.store.close()


@pytest.fixture
def h(services):
    from app.chat import ChatHandlers
    from app.feedback import FeedbackHandlers
    from app.panels import Panels

    return ChatHandlers(services), FeedbackHandlers(services), Panels(services)


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    from llaca.world.families import generate

    it = generate("color", 1, seed=99, size=96)[0]
    path = tmp_path_factory.mktemp("img") / "shape.png"
    it.image.save(path)
    return path, it.scene.objects[0].color, it.scene.objects[0].name


def last(gen):
    out = None
    for out in gen:
        pass
    return tuple(value(o) for o in out)


def value(x):
    """A chatbot output: plain messages, or gr.update(value=..., feedback_value=...)."""
    return x["value"] if isinstance(x, dict) and x.get("__type__") == "update" and "value" in x else x


def ask(chat, state, history, text, image=None):
    box = {"text": text, "files": [str(image)] if image else []}
    return [tuple(value(o) for o in out) for out in chat.submit(box, history, state, 0.0, 0.7, 32)]


def test_ask_streams_records_and_follows_up(h, services, item):
    from app.state import SessionState

    chat, _, _ = h
    path, color, shape = item
    state = SessionState()
    outs = ask(chat, state, [], COLOR_Q, path)
    assert outs[0][0] == {"text": "", "files": []}  # the textbox is cleared once...
    assert all(o[0] == gr.skip() for o in outs[1:])  # ...then left alone (the user may type the next one)
    assert outs[0][1][-1]["content"].endswith("▌")  # a streaming placeholder first
    history = outs[-1][1]
    assert history[-1] == {"role": "assistant", "content": color}
    assert [m.role for m in state.messages] == ["user", "assistant"] and state.messages[1].version == "base"
    assert state.selected == 1
    stored = services.store.session_history(state.session_id)
    assert [m.id for m in stored] == [m.id for m in state.messages] and stored[1].text == color

    history = ask(chat, state, history, SHAPE_Q)[-1][1]  # no image: same conversation
    assert history[-1]["role"] == "assistant" and history[-1]["content"].strip()
    history = ask(chat, state, history, COLOR_Q)[-1][1]
    assert history[-1]["content"] == color  # still about the same image
    q2 = services.store.get_message(state.session_id, state.messages[2].id)
    assert q2.parent_id == state.messages[1].id and q2.image_sha256 is None
    parents = [services.store.get_message(state.session_id, m.id).parent_id for m in state.messages[1:4]]
    assert parents == [m.id for m in state.messages[:3]] and state.messages[0].image  # back to the image


def test_no_image_and_empty_question_warn_and_change_nothing(h):
    from app.state import SessionState

    chat, _, _ = h
    state = SessionState()
    with pytest.warns(UserWarning, match="Upload an image first"):
        outs = ask(chat, state, [], COLOR_Q)
    assert len(outs) == 1 and outs[0][:2] == (gr.skip(), gr.skip())
    with pytest.warns(UserWarning, match="Type a question"):
        ask(chat, state, [], "  ")
    assert state.messages == [] and state.session_id is None


def test_feedback_on_any_answer_edit_and_correction_box(h, services, item):
    from app.state import SessionState

    chat, fb, panels = h
    path, color, shape = item
    state = SessionState()
    history = ask(chat, state, [], COLOR_Q, path)[-1][1]
    history = ask(chat, state, history, SHAPE_Q)[-1][1]
    first, second = state.messages[1].id, state.messages[3].id

    # thumbs-down on the FIRST answer (not only the last) selects it for correction
    out = fb.like(history, state, "", gr.LikeData(None, {"index": 1, "value": color, "liked": False}))
    assert state.selected == 1 and "Answer #1" in out[1]
    assert value(out[2]) == "" and out[3] == first  # the box is emptied and tied to that answer
    fb.like(history, state, first, gr.LikeData(None, {"index": 3, "value": shape, "liked": True}))
    kinds = [(f.message_id, f.kind) for f in services.store.session_feedback(state.session_id)]
    assert kinds == [(first, "dislike"), (second, "like")]

    # selecting the second answer re-ties the box: text typed for the first cannot reach it
    _, selection, box, target, ack = fb.select(history, state, first, gr.SelectData(None, {"index": 3, "value": shape}))
    assert "Answer #2" in selection and value(box) == "" and target == second and ack == ""
    _, selection, box, target, _ = fb.select(history, state, second, gr.SelectData(None, {"index": 1, "value": color}))
    assert "Answer #1" in selection and target == first
    # a refused save says why in the panel, and keeps the text for fixing
    with pytest.warns(UserWarning, match="same as the original"):
        box, _, _, ack = fb.save_correction(color, first, history, state)
    assert box == gr.skip() and ack.startswith("⚠️ Not saved:") and "same as the original" in ack
    with pytest.warns(UserWarning, match="no longer in the chat"):
        assert "no longer in the chat" in fb.save_correction("crimson", "gone-id", history, state)[3]

    # the "Correct this answer" box saves against the answer it is tied to
    box, history, _, ack = map(value, fb.save_correction("crimson", first, history, state))
    assert box == "" and history[1] == corrected_message(color, "crimson")  # the model's answer stays, struck
    assert ack == "✏️ Answer #1 corrected. Saved: 1 correction in this session's buffer."
    # an edit in place of the second answer reaches the buffer size (2): ready
    edited = [dict(m) for m in history]
    edited[3] = {"role": "assistant", "content": "hexagon"}
    update, _, ack = fb.edit(edited, state, gr.EditData(None, {"index": 3, "value": "hexagon", "previous_value": shape}))
    assert update["feedback_value"] == ["Dislike", "Dislike"]  # thumbs stay shown after the re-render
    history = value(update)
    assert history[3] == corrected_message(shape, "hexagon") and history[1] == corrected_message(color, "crimson")
    assert "2 corrections" in ack and "ready" in ack
    [buf] = services.store.session_buffers(state.session_id)
    assert buf.status == "ready" and [(i.message_id, i.answer) for i in buf.items] == [(first, "crimson"), (second, "hexagon")]
    assert all(i.image_sha256 == state.messages[0].image for i in buf.items)

    # the panel shows what was taught and which version answered
    status, body = panels.session_panel(state)
    assert "serving **base**" in status and "queued for learning" in body and "hexagon" in body
    assert "#1 <code>base</code>✏️" in body and "data:image/png;base64," in body

    # a "correction" back to the model's own answer is refused and the shown text is put back
    with pytest.warns(UserWarning, match="same as the original"):
        original = services.store.get_message(state.session_id, second).text
        shown = history[3]["content"]
        restored, _, _ = map(value, fb.edit(history, state, gr.EditData(None, {"index": 3, "value": original, "previous_value": shown})))
    assert restored[3]["content"] == shown
    # teach: the ready buffer is ready already, a new empty one has nothing to teach
    with pytest.warns(UserWarning, match="nothing to teach"):
        fb.teach(state)


def test_a_correction_keeps_the_models_answer_visible(h, services, item):
    """The chat shows the model's answer (struck through, marked corrected) and the correction
    after it; correcting again, by the box or in place, shows only the latest correction."""
    from app.history import normalize
    from app.state import SessionState

    chat, fb, _ = h
    path, _, _ = item

    state = SessionState()
    history = ask(chat, state, [], COLOR_Q, path)[-1][1]
    answer = history[1]["content"]
    first = state.messages[1].id
    fb.select(history, state, "", gr.SelectData(None, {"index": 1, "value": answer}))

    _, history, _, _ = map(value, fb.save_correction("teal", first, history, state))
    shown = history[1]["content"]
    assert len(history) == 2 and len(state.messages) == 2  # still one message per store message
    assert shown.startswith("**Model's answer (corrected):** ") and f"~~{answer}~~" in shown
    assert shown.endswith("✏️ **Correction:** teal") and shown.index(f"~~{answer}~~") < shown.index("teal")
    assert state.messages[1].feedback == "corrected"
    assert "is corrected to “teal”" in fb.selection_text(state, normalize(history))

    # correcting again (the box) replaces the correction; the model's answer stays once
    _, history, _, _ = map(value, fb.save_correction("navy", first, history, state))
    shown = history[1]["content"]
    assert shown == corrected_message(answer, "navy")["content"] and "teal" not in shown
    # and in place: the edit box holds both texts, the user changes the correction part
    edited = [dict(m) for m in history]
    edited[1] = {"role": "assistant", "content": shown.replace("navy", "olive")}
    update, _, _ = fb.edit(edited, state, gr.EditData(None, {"index": 1, "value": edited[1]["content"], "previous_value": shown}))
    history = value(update)
    assert history[1] == corrected_message(answer, "olive") and update["feedback_value"] == ["Dislike"]
    # or replaces the whole text with just the new correction
    edited = [dict(m) for m in history]
    edited[1] = {"role": "assistant", "content": "maroon"}
    history = value(fb.edit(edited, state, gr.EditData(None, {"index": 1, "value": "maroon",
                                                               "previous_value": history[1]["content"]}))[0])
    assert history[1] == corrected_message(answer, "maroon")
    fixes = [(f.corrected_text, f.previous_text) for f in services.store.session_feedback(state.session_id)
             if f.kind == "correction"]
    assert fixes[-1] == ("maroon", answer) and len(fixes) == 4
    [buf] = services.store.session_buffers(state.session_id)
    assert [i.answer for i in buf.items] == ["maroon"]  # one item, updated

    # the model sees the correction as its earlier answer; the next answer leaves it shown
    history = ask(chat, state, history, SHAPE_Q)[-1][1]
    assert history[1] == corrected_message(answer, "maroon") and len(history) == 4
    # Undo and Regenerate re-render the corrected answer as it was
    _, history, _ = map(value, chat.undo(history, state))
    assert history == [{"role": "user", "content": [{"path": str(path)}, COLOR_Q]}, corrected_message(answer, "maroon")]


def test_edit_question_regenerate_undo_clear(h, services, item):
    from app.state import SessionState

    chat, fb, _ = h
    path, color, shape = item
    state = SessionState()
    history = ask(chat, state, [], SHAPE_Q, path)[-1][1]
    old_q = state.messages[0].id

    # editing the question asks it again, about the same image
    edited = [dict(m) for m in history]
    edited[0] = {"role": "user", "content": [{"path": str(path)}, COLOR_Q]}
    history, state, ack = map(value, fb.edit(edited, state, gr.EditData(None, {"index": 0, "value": COLOR_Q, "previous_value": SHAPE_Q})))
    assert state.reask == 0 and len(history) == 1 and "again" in ack
    history, _ = last(chat.reask(history, state, 0.0, 0.7, 32))
    assert history[-1]["content"] == color and state.messages[0].id != old_q
    assert services.store.get_message(state.session_id, state.messages[0].id).image_sha256 == state.messages[0].image

    # Regenerate: a second answer to the same stored question
    q_id, a1 = state.messages[0].id, state.messages[1].id
    history, _ = last(chat.retry(history, state, 0.0, 0.7, 32))
    assert history[-1]["content"] == color and state.messages[1].id != a1
    answers = [m for m in services.store.session_history(state.session_id) if m.parent_id == q_id]
    assert len(answers) == 2

    # Undo puts the question (and its image) back in the textbox
    box, history, _ = map(value, chat.undo(history, state))
    assert box["text"] == COLOR_Q and box["files"] == [str(path)] and history == [] and state.messages == []
    history = ask(chat, state, [], COLOR_Q, path)[-1][1]
    chatbot, state, box = chat.clear(state)
    assert chatbot == [] and state.messages == [] and state.session_id is not None


def test_model_failure_keeps_the_question_and_says_why(h, services, item, monkeypatch):
    from app.state import SessionState

    chat, _, _ = h
    path, color, _ = item
    state = SessionState()

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # pragma: no cover

    monkeypatch.setattr(services.assistant, "stream", broken)
    with pytest.warns(UserWarning, match="ran out of memory.*Your question is kept"):
        outs = ask(chat, state, [], COLOR_Q, path)
    history = outs[-1][1]
    assert len(history) == 1 and history[0]["role"] == "user" and len(state.messages) == 1
    assert services.store.session_history(state.session_id)[0].text == COLOR_Q
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history, _ = last(chat.retry(history, state, 0.0, 0.7, 32))
    assert history[-1]["content"] == color


def test_rollback_needs_the_admin_password(h, services):
    from app.dashboard import BASE_CHOICE, Dashboard

    panels = Dashboard(services)
    with pytest.warns(UserWarning, match="Wrong admin password"):
        assert "Wrong admin password" in panels.rollback(BASE_CHOICE, "guess")[0]
    assert panels.rollback(BASE_CHOICE, "pw")[0].startswith("✅")
    summary, rows, *_ = panels.dashboard()
    assert "No adapter has been trained yet" in summary and rows == []


def test_matrix_cells_without_a_figure_are_labelled(services):
    """A version not evaluated on a task (None, or a short row) gets a grey "–" cell and a note,
    not a blank white cell."""
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    from app.dashboard import Dashboard
    from feedback_store.records import AdapterVersion
    from llaca.bench.plots import MISSING, MISSING_COLOR, matrix_heatmap
    from tests.worker_helpers import metrics_record

    panels = Dashboard(services)
    tasks = ["color", "buffer 1", "buffer 2"]
    record = metrics_record(2, tasks, [[97.0, 40.0, None], [95.0, 88.0, None], [94.0, 87.0, 90.0]], ["base", "v1", "v2"])
    adapter = AdapterVersion("v2", "v1", "/nowhere", "llaca", "current", record, {}, None, 0.0, 0.0)
    ax = panels.matrix_figure(adapter).axes[0]
    labels = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert labels[(2, 0)] == labels[(2, 1)] == MISSING  # column 2 = buffer 2, rows 0-1 = base, v1
    assert labels[(2, 2)] == "90" and labels[(0, 0)] == "97" and len(labels) == 9
    assert "not evaluated" in ax.get_xlabel()
    image = ax.images[0]
    assert image.get_array().mask[0][2] and tuple(image.cmap.get_bad()) == to_rgba(MISSING_COLOR)  # grey

    # a row shorter than the task list (an older record) is padded the same way
    ax = Figure().add_subplot(1, 1, 1)
    matrix_heatmap(ax, [[97.0], [95.0, 88.0]], ["color", "buffer 1"], "t")
    labels = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert labels == {(0, 0): "97", (1, 0): MISSING, (0, 1): "95", (1, 1): "88"}
