"""Who may teach: authors, the review policy, the review queue and per-author quotas.

Store-level and handler-level checks on the tiny model (no server); the end-to-end path
through the real app and ``gradio_client`` is in ``tests/test_teaching_e2e.py``.
"""

from __future__ import annotations

import io
import subprocess
import sys
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from app.quotas import QuotaError
from app.teaching import WAITING_FOR_REVIEW, Teaching, client_address
from feedback_store import FeedbackStore, InvalidInputError, NotFoundError, parse_ids
from llaca.config.settings import Settings, SettingsError
from tests.conftest import ROOT


def _png(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _answer(store: FeedbackStore, session: str, question: str = "What color is the shape?", text: str = "red") -> str:
    q = store.record_user_message(session, question, image_bytes=_png())
    return store.record_answer(session, q.id, text).id


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "data") as s:
        yield s


def test_a_guest_is_named_by_their_session_and_a_user_by_their_name(store):
    guest = store.start_session()
    assert guest.author == f"guest-{guest.id[:8]}" and store.author_of(guest.id) == guest.author
    assert store.start_session(user="ada").author == "ada"
    assert store.start_session(author="hf-bob").author == "hf-bob"


def test_held_corrections_wait_then_approved_ones_enter_a_ready_buffer_and_rejected_ones_never_do(store):
    s = store.start_session().id
    ids = [store.hold_correction(s, _answer(store, s), f"The shape is blue {k}.").feedback_id for k in range(3)]
    assert store.session_buffers(s) == []  # nothing in a buffer: nothing can train
    assert [r.status for r in store.pending_reviews()] == ["pending"] * 3
    states = store.approve_reviews(f"{ids[0]}, {ids[1]}", by="admin", ready_threshold=8)
    assert {st.status for st in states} == {"ready"}  # approved work is queued at once
    (buffer,) = store.session_buffers(s)
    assert buffer.status == "ready" and [i.answer for i in buffer.items] == ["The shape is blue 0.", "The shape is blue 1."]
    (rejected,) = store.reject_reviews([ids[2]], by="admin", reason="not what the picture shows")
    assert rejected.status == "rejected" and rejected.reason == "not what the picture shows"
    assert [(r.status, r.reason) for r in store.session_reviews(s)] == [
        ("approved", None), ("approved", None), ("rejected", "not what the picture shows")]
    assert store.pending_reviews() == []
    with pytest.raises(InvalidInputError, match="already approved"):
        store.approve_reviews([ids[0]], by="admin")


def test_approving_is_all_or_nothing_and_bad_ids_are_named(store):
    s = store.start_session().id
    good = store.hold_correction(s, _answer(store, s), "blue").feedback_id
    with pytest.raises(NotFoundError, match="no correction 999"):
        store.approve_reviews([good, 999], by="admin")
    assert [r.feedback_id for r in store.pending_reviews()] == [good] and store.session_buffers(s) == []
    with pytest.raises(InvalidInputError, match="whole numbers"):
        parse_ids("1, two")
    with pytest.raises(InvalidInputError, match="no correction ids"):
        parse_ids(" , ")
    assert parse_ids("3, 4,4") == [3, 4] and parse_ids([5, "6"]) == [5, 6] and parse_ids(7) == [7]


def test_correcting_a_held_answer_again_replaces_the_held_correction(store):
    s = store.start_session().id
    m = _answer(store, s)
    store.hold_correction(s, m, "blue")
    store.hold_correction(s, m, "green")
    assert [r.correction for r in store.pending_reviews()] == ["green"]


def _teaching(store, **kw) -> Teaching:
    return Teaching(Settings(data_dir=store.data_dir, **{"buffer_size": 8, **kw}), store)


def test_the_policy_decides_where_a_correction_goes(store):
    anyone = _teaching(store)
    s = store.start_session().id
    assert anyone.correct(s, _answer(store, s), "blue").buffer_id is not None

    review = _teaching(store, teach="review", admin_password="pw", teachers=("ada",))
    guest = store.start_session().id
    held = review.correct(guest, _answer(store, guest), "blue")
    assert held.held and held.status == WAITING_FOR_REVIEW and held.buffer_id is None and held.size == 1
    ada = store.start_session(user="ada").id
    trusted = review.correct(ada, _answer(store, ada), "blue")
    assert not trusted.held and trusted.buffer_id is not None
    assert review.you(guest) == {"author": store.author_of(guest), "trusted": False, "teach": "review", "pending": 1}
    assert review.you(ada)["trusted"] is True


def test_quotas_refuse_with_the_limit_named(store):
    t = _teaching(store, questions_per_minute=2, corrections_per_hour=2, waiting_buffers=1, max_new_tokens=64,
                  image_mb_per_day=0.0001)
    with pytest.raises(QuotaError, match="limit of 64 .LLACA_MAX_NEW_TOKENS"):
        t.quotas.check_tokens(65)
    request = SimpleNamespace(headers={"x-forwarded-for": "198.51.100.9, 203.0.113.7"},
                              client=SimpleNamespace(host="10.0.0.1"))  # a proxy: its own entry is the last
    assert client_address(request) == "203.0.113.7"
    direct = SimpleNamespace(headers={"x-forwarded-for": "198.51.100.9"}, client=SimpleNamespace(host="93.184.216.34"))
    assert client_address(direct) == "93.184.216.34"  # no proxy in between: a forged header is ignored
    guest = store.start_session(address=t.address(request)).id
    key = store.quota_key_of(guest)
    assert key == "address:203.0.113.7"
    t.quotas.check_question(key)
    t.quotas.check_question(key)
    other = store.start_session(address="203.0.113.7").id  # a new guest session from the same address
    with pytest.raises(QuotaError, match="2 a minute from your network address .LLACA_QUESTIONS_PER_MINUTE"):
        t.quotas.check_question(store.quota_key_of(other))
    assert store.quota_key_of(store.start_session(address=t.address(SimpleNamespace(
        headers={}, client=SimpleNamespace(host="127.0.0.1")))).id).startswith("guest-")  # this machine's own
    _answer(store, guest)  # stores an image for this teacher
    with pytest.raises(QuotaError, match="LLACA_IMAGE_MB_PER_DAY"):
        _teaching(store, image_mb_per_day=0.0001).quotas.check_question(key, image_bytes=1000)
    t.correct(guest, _answer(store, guest), "blue")
    t.correct(guest, _answer(store, guest), "green")
    with pytest.raises(QuotaError, match="2 an hour from your network address .LLACA_CORRECTIONS_PER_HOUR"):
        t.correct(guest, _answer(store, guest), "pink")
    s2 = store.start_session(user="bob").id
    t2 = _teaching(store, buffer_size=1, waiting_buffers=1)
    t2.correct(s2, _answer(store, s2), "blue")  # a buffer of 1: ready at once
    with pytest.raises(QuotaError, match="LLACA_WAITING_BUFFERS"):
        t2.correct(s2, _answer(store, s2), "green")


def test_the_oauth_profile_names_the_author(tmp_path, tiny):
    import torch

    from app.api import ApiHandlers
    from app.services import create_services
    from app.state import SessionState

    image = tmp_path / "red.png"
    image.write_bytes(_png())
    threads = torch.get_num_threads()  # an answer sets the process's torch threads (chat_threads): put them back
    svc = create_services(Settings(data_dir=tmp_path / "data", device="cpu"), lm=tiny)
    try:
        api, state = ApiHandlers(svc), SessionState()
        profile = gr.OAuthProfile({"name": "Ada L", "preferred_username": "ada-l", "profile": "", "picture": ""})
        *_, (answer, message_id, _) = list(api.ask(str(image), "What color is the shape?", 0, 0.7, 8, state, None, profile))
        assert svc.store.author_of(state.session_id) == "ada-l"
        assert api.status(state, None, profile)["you"]["author"] == "ada-l"
    finally:
        svc.store.close()
        torch.set_num_threads(threads)


def test_quota_defaults_follow_the_deployment_and_each_can_be_set():
    local, space = Settings.from_args([]), Settings.from_args([], env={"SPACE_ID": "a/b", "LLACA_ADMIN_PASSWORD": "p"})
    public_host = Settings.from_args(["--host", "0.0.0.0", "--waiting-buffers", "5"])
    assert (local.quotas, space.quotas, public_host.quotas) == ("local", "public", "public")
    assert space.questions_per_minute == 20 and space.waiting_buffers == 3 and space.teach == "review"
    assert local.questions_per_minute == 600 and local.teach == "anyone"
    assert public_host.waiting_buffers == 5 and public_host.corrections_per_hour == 60
    with pytest.raises(SettingsError, match="questions-per-minute must be at least 1"):
        Settings.from_args(["--questions-per-minute", "0"])


@pytest.mark.slow  # over ~10 s on 2 cores
def test_review_without_an_admin_password_refuses_to_start(tmp_path):
    with pytest.raises(SettingsError, match="admin password"):
        Settings.from_args([], env={"SPACE_ID": "someone/llaca"}).check_app()
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--teach", "review", "--data-dir", str(tmp_path / "d")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "GRADIO_ANALYTICS_ENABLED": "False"})
    assert proc.returncode == 2 and "needs an admin password" in proc.stderr and "LLACA_ADMIN_PASSWORD" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_the_fair_queue_serves_a_quiet_author_before_a_flooding_one(store):
    flood = [store.start_session(user="flooder").id for _ in range(3)]
    for s in flood:
        store.add_correction(s, _answer(store, s), "junk", ready_threshold=1)
    first = store.claim_ready_buffer("w", 60)
    store.finish_claim(first.id, "w", "rejected", "junk")
    quiet = store.start_session().id
    store.add_correction(quiet, _answer(store, quiet), "blue", ready_threshold=1)  # ready last
    nxt = store.claim_ready_buffer("w", 60)
    assert nxt.session_id == quiet  # its author has had nothing learned yet
