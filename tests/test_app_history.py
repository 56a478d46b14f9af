"""The chat-history normaliser: every shape Gradio uses becomes the same Turn list."""

from __future__ import annotations

from gradio.components.chatbot import ChatMessage, FileMessage, Message, TextMessage
from gradio.data_classes import FileData

from app.history import (
    Turn,
    assistant_message,
    context_start,
    context_turns,
    corrected_message,
    last_index,
    normalize,
    to_messages,
    user_message,
)


def test_gradio6_normalised_shape():
    history = [
        {"role": "user", "metadata": None, "options": None, "content": [
            {"type": "file", "file": {"path": "/tmp/a.png", "url": None}, "alt_text": None},
            {"type": "text", "text": "What color is the shape?"}]},
        {"role": "assistant", "metadata": None, "options": None, "content": [{"type": "text", "text": "red"}]},
    ]
    assert normalize(history) == [
        Turn("user", "What color is the shape?", ["/tmp/a.png"]),
        Turn("assistant", "red", []),
    ]


def test_plain_strings_paths_tuples_and_lists():
    history = [
        {"role": "user", "content": {"path": "/tmp/b.png"}},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": ["one", "two"]},
        {"role": "user", "content": ("/tmp/c.png", "alt")},
        {"role": "assistant", "content": "ok"},
    ]
    turns = normalize(history)
    assert [t.role for t in turns] == ["user", "user", "assistant", "user", "assistant"]
    assert turns[0].files == ["/tmp/b.png"] and turns[0].text == ""
    assert turns[2].text == "one\ntwo"
    assert turns[3].files == ["/tmp/c.png"]


def test_pydantic_messages_and_chatmessage_objects():
    history = [
        Message(role="user", content=[FileMessage(file=FileData(path="/tmp/d.png")), TextMessage(text="Describe it")]),
        ChatMessage(content="a blue star", role="assistant"),
    ]
    assert normalize(history) == [Turn("user", "Describe it", ["/tmp/d.png"]), Turn("assistant", "a blue star")]


def test_round_trip_of_what_the_app_sends():
    sent = [user_message("What shape?", "/tmp/e.png"), assistant_message("circle"), user_message("And colour?")]
    turns = normalize(sent)
    assert turns == [Turn("user", "What shape?", ["/tmp/e.png"]), Turn("assistant", "circle"), Turn("user", "And colour?")]
    assert normalize(to_messages(turns)) == turns


def test_a_corrected_answer_shows_both_texts_and_reads_back_as_the_correction():
    import gradio as gr

    msg = corrected_message("a ~ b\nsecond line", "a *circle*")
    assert msg["content"].startswith("**Model's answer (corrected):** ~~a \\~ b~~\n~~second line~~")
    assert msg["content"].endswith("✏️ **Correction:** a *circle*")
    chatbot = gr.Chatbot()  # as the page sends it back
    back = chatbot.preprocess(chatbot.postprocess([user_message("q", "/i.png"), msg]))
    turns = normalize(back)
    assert turns[1] == Turn("assistant", "a *circle*", original="a ~ b\nsecond line")
    assert to_messages(turns)[1] == msg
    assert context_turns(turns + [Turn("user", "q2")], 0, 2) == [("q", "a *circle*"), ("q2", None)]  # the model sees the fix
    assert normalize([{"role": "user", "content": msg["content"]}])[0].original is None  # only answers are parsed


def test_streaming_cursor_and_empty_history():
    assert normalize(None) == [] and normalize([]) == []
    assert assistant_message("par", streaming=True)["content"].startswith("par")
    assert assistant_message("")["content"]  # never an empty bubble


def test_context_restarts_at_a_new_image():
    turns = normalize([
        user_message("q1", "/img1.png"), assistant_message("a1"),
        user_message("q2"), assistant_message("a2"),
        user_message("q3", "/img2.png"), assistant_message("a3"),
        user_message("q4"),
    ])
    assert context_start(turns) == 4
    assert context_turns(turns, 4, 6) == [("q3", "a3"), ("q4", None)]
    assert context_start(turns, upto=3) == 0
    assert context_turns(turns, 0, 2) == [("q1", "a1"), ("q2", None)]
    assert last_index(turns, "assistant") == 5 and last_index(turns, "user", upto=3) == 2


def test_context_skips_unanswered_questions_and_uses_state_images():
    turns = normalize([user_message("q1", "/i.png"), user_message("q2"), assistant_message("a2"), user_message("q3")])
    assert context_turns(turns, 0, 3) == [("q2", "a2"), ("q3", None)]
    # the state may know an image the displayed history lost (e.g. after an edit)
    plain = normalize([user_message("q1"), assistant_message("a1"), user_message("q2")])
    assert context_start(plain) is None
    assert context_start(plain, has_image=[True, False, False]) == 0
