"""The learning policy: one claimed buffer -> per instruction group, train -> guard -> publish -> outcomes.

The learning worker's loop (`llaca.worker.loop`) hands every claimed buffer here
(`learn_buffer`); the worker's `learn_method` (`llaca.config.methods.GROUP_METHODS`) says which
group a new wording joins and where a new group starts. Each correction is assigned to an
instruction group by `llaca.groups.grouping`'s rule over the worker's codebook (`adapters/codebook.json`, every group
ever taught): its words, else what the served groups' adapters already answer (a question
like no group's starts a new one). Each group in the buffer then gets its own run:

1. **Train** the group's adapter: a group the served system already has continues from its
   adapter with the worker's `tune_method` (default `llaca+replay`: the dynamic EMA and replay
   of the group's earlier, learned corrections); a new group is trained with `seq` from where
   the method says (`llaca.groups.start`: fresh, as the paper's ICML version does, or a copy of a related
   group's adapter).
   The run's training set is the buffer's new training items of the group plus every
   *pending* item of the group: corrections of rejected runs, and held-out items the served
   version still answered wrong. Nothing a user taught is dropped, except that a correction
   in `MAX_REFUSALS` refused runs is no longer retried (it stays, unlearned, with the reason).
2. **Guard** the routed system (`llaca.worker.guard.decide_paired`): the candidate is the served
   system with this group's adapter replaced; both answer, through their own routing, what
   the run was taught, the group's held-out items pooled over all its buffers, every other
   group's pooled held-out items, the base probes, and *other authors'* learned corrections
   of this group (conflicts: a candidate that contradicts them is refused; under the review
   policy its corrections go to the admin's queue as a conflict naming both authors).
   Each version records, per group, the authors whose corrections trained it (provenance).
3. **Publish** the candidate as a routed system folder (`llaca.groups.system`), register it
   and promote or reject it; a rejected candidate takes no version number.
4. **Record each correction's outcome** (`FeedbackStore.mark_learned` / `mark_pending`):
   learned in vN (trained on, or held out and answered right by vN), or pending with the
   reason, to be trained again by the group's next run.

Crash safety: the group assignment is stored before training (a retry recomputes nothing);
the candidate's metrics record its group and the ids of the items it learned, so a retry
after a crash between publishing and promoting finishes that version instead of training
again, and a crash before publishing leaves only an unpublished `.tmp` folder.

Several workers on one data dir: assigning groups and publishing a version take an exclusive
lock (`groups_lock`, flock on `adapters/.groups.lock`). A version another worker promoted
while this run trained is built on: its groups are kept and this group's adapter is put on
top (groups share no weights, so the guard's verdict on them stands). If that version
retrained this very group, the run is abandoned (`GroupChangedMeanwhile`) and the buffer
returns to the queue when its lease expires, to be trained from the newer adapter.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from feedback_store import (
    MAX_REFUSALS,
    AdapterStatus,
    BufferStatus,
    Split,
    WorkerActivity,
)
from llaca.config.methods import GROUP_METHODS, joins_by_answers
from llaca.groups.codebook import InstructionCodebook
from llaca.groups.grouping import assign_questions
from llaca.groups.routed import routed_correct
from llaca.groups.start import PROBE_SAMPLES, probe, start_adapter
from llaca.groups.system import RoutedSystem, is_routed_system
from llaca.learn.tuner import TuneConfig, library_versions
from llaca.worker.adapter_files import staging_dir
from llaca.worker.guard import (
    CONFLICT,
    EARLIER,
    NEW,
    PROBE,
    TAUGHT,
    PairedSet,
    decide_paired,
)
from llaca.worker.record import AdapterMetrics

log = logging.getLogger(__name__)

WORKER_CODEBOOK = "codebook.json"  # in adapters/: the worker's codebook of every group ever assigned
LOCK_FILE = ".groups.lock"  # in adapters/: serialises codebook updates and promotions between workers


class LeaseLost(RuntimeError):
    """Another worker took this buffer over (our lease expired), or this worker is stopping;
    abandon the run."""


class GroupChangedMeanwhile(RuntimeError):
    """Another worker promoted a new adapter for this group while we trained; train again."""


@contextmanager
def groups_lock(adapters_dir: Path):
    """An exclusive lock (flock) shared by every worker on this host's data dir: assigning
    groups and publishing a routed version are read-modify-write steps."""
    import fcntl

    with open(Path(adapters_dir) / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


MAX_TAUGHT_CHECK = 64  # training items the guard re-answers to check the fit
MAX_EVIDENCE = 32  # of each other author's learned items, the most recent the conflict check re-answers
MAX_EVIDENCE_AUTHORS = 8


def worker_codebook(adapters_dir: Path) -> InstructionCodebook:
    path = Path(adapters_dir) / WORKER_CODEBOOK
    return InstructionCodebook.load(path) if path.exists() else InstructionCodebook()


def served_system(store) -> tuple[object | None, RoutedSystem]:
    """The current version and the routed system it serves (empty for the base model, or for a
    single adapter trained by another method: groups start from the base model)."""
    current = store.current_adapter()
    if current is not None and is_routed_system(current.path):
        return current, RoutedSystem.load(current.path)
    return current, RoutedSystem.empty()


def routed_hits(lm, system: RoutedSystem, sets: list[list], shared=None) -> list[list[bool]]:
    """Per sample of each set: does `system` (routing included) answer it right? With `shared`
    (the app's `SharedModel`) on that model, one adapter resident at a time."""
    def route(question: str) -> str | None:
        group = system.route(question)
        return system.adapter_name(group) if group else None

    adapters = {system.adapter_name(g): p for g, p in system.adapters.items()}
    return [correct for _, correct in routed_correct(lm.model, lm.processor, adapters, route, sets, shared=shared)]


def assign_groups(worker, buffer, items) -> dict[int, str]:
    """Each item's instruction group, stored before any training. A retry after a crash finds
    the assignment stored, or recomputes the same one (the codebook was saved first)."""
    if all(it.group_id for it in items):
        return {it.id: it.group_id for it in items}
    with groups_lock(worker.adapters_dir):
        return _assign(worker, buffer, items)


def _assign(worker, buffer, items) -> dict[int, str]:
    """`llaca.groups.grouping`'s rule: words, else what the served groups' adapters already answer."""
    codebook = worker_codebook(worker.adapters_dir)
    todo = [it for it in sorted(items, key=lambda i: i.id) if not it.group_id]
    by_question: dict[str, list] = defaultdict(list)
    for it in todo:
        by_question[it.question].append(it)
    _, system = served_system(worker.store)

    def probe_served(samples):
        return probe(worker.lm.model, worker.lm.processor, system.adapters, samples, shared=worker.shared)

    def group_answers(group: str) -> list[str]:  # what the group's served adapter was taught
        return [it.answer for it in _learned(worker.store, group)]

    decisions = assign_questions(codebook, [it.question for it in todo],
                                 lambda q: worker.samples(by_question[q][:PROBE_SAMPLES]),
                                 probe_served if system.adapters and joins_by_answers(worker.settings.learn_method)
                                 else None, group_answers)
    for q, d in decisions.items():
        if d.by != "words":
            fits = ", ".join(f"{g} {f.accuracy:.0%} right, loss {f.loss:.2f}" for g, f in d.fits.items())
            log.info("buffer %s: %r %s (probe: %s)", buffer.id, q[:80],
                     f"joins group {d.group} by its answers" if d.by == "answers"
                     else f"starts group {d.group}", fits or "not probed")
    groups = {it.id: it.group_id for it in items if it.group_id}
    groups |= {it.id: decisions[it.question].group for it in todo}
    codebook.save(worker.adapters_dir / WORKER_CODEBOOK)
    worker.store.set_item_groups(buffer.id, groups)
    return groups


def _learned(store, group: str) -> list:
    """The group's corrections that a promoted version learned, oldest first."""
    return [it for it, _ in store.group_items(group) if it.learned_in is not None and it.image_sha256]


def evidence_by_author(earlier, author_of: dict[int, str], run_authors: set[str]) -> list[tuple[str, list]]:
    """Other authors' learned corrections of the group (training and held-out items), the most
    recent `MAX_EVIDENCE` of each: what a candidate must not contradict."""
    by_author: dict[str, list] = defaultdict(list)
    for it in earlier:
        author = author_of.get(it.id, "")
        if it.learned_in is not None and it.image_sha256 and author not in run_authors:
            by_author[author].append(it)
    ranked = sorted(by_author.items(), key=lambda kv: -len(kv[1]))[:MAX_EVIDENCE_AUTHORS]
    return [(a, its[-MAX_EVIDENCE:]) for a, its in sorted(ranked)]


def _recover(worker, buffer, group: str) -> tuple[str, str, str] | None:
    """Finish a version a crashed attempt already published for (buffer, group)."""
    store = worker.store
    for a in store.list_adapters():
        record = AdapterMetrics.from_dict(a.metrics) if a.metrics else None
        if record is None or record.buffer != buffer.id or record.group != group or not Path(a.path).exists():
            continue
        if a.status == AdapterStatus.CANDIDATE:
            a = store.promote_adapter(a.version) if record.guard.passed else store.reject_adapter(a.version, record.guard.reason)
        _record_outcome(store, a.version, a.status != AdapterStatus.REJECTED, record.guard.reason, record.tune.get("items") or {})
        log.info("buffer %s group %s: recovered %s (%s) from an interrupted run", buffer.id, group, a.version, a.status)
        outcome = BufferStatus.REJECTED if a.status == AdapterStatus.REJECTED else BufferStatus.PROMOTED
        return a.version, outcome, record.guard.reason
    return None


def _record_outcome(store, version: str, promoted: bool, reason: str, items: dict) -> None:
    if promoted:
        store.mark_learned(items.get("trained", []) + items.get("heldout_right", []), version)
        store.mark_pending(items.get("heldout_wrong", []),
                           f"held out to check {version}, which still answers it wrong; it is trained with this "
                           "group's next corrections")
    else:
        store.mark_pending(items.get("trained", []) + items.get("heldout_right", []) + items.get("heldout_wrong", []),
                           f"not learned yet: {version} was {reason}; it is trained again with this group's next "
                           "corrections", refused=True)


def learn_buffer(worker, buffer, lost: threading.Event) -> BufferStatus:
    """Run every group of a claimed buffer (module docstring); returns the buffer's outcome."""
    train_items, held_items = worker.split(buffer)
    items = train_items + held_items
    if not items:
        return worker.finish(buffer, BufferStatus.REJECTED, "no corrections with an image to learn from", None)
    groups = assign_groups(worker, buffer, items)
    outcomes: list[tuple[str, str, BufferStatus, str]] = []  # (group, version, outcome, the guard's reason)
    for group in dict.fromkeys(groups[it.id] for it in sorted(items, key=lambda i: i.id)):
        if lost.is_set():
            raise LeaseLost(f"lost the lease on buffer {buffer.id}")
        done = _recover(worker, buffer, group) or _run_group(worker, buffer, group, lost)
        outcomes.append((group, *done))
    promoted = [v for _, v, o, _ in outcomes if o == BufferStatus.PROMOTED]
    reason = "; ".join(f"group {g}: {v} {o}" + (f" ({why})" if o == BufferStatus.REJECTED else "")
                       for g, v, o, why in outcomes)
    reason = reason if len(reason) <= 3000 else reason[:2999] + "…"
    if promoted:
        return worker.finish(buffer, BufferStatus.PROMOTED, reason, promoted[-1])
    return worker.finish(buffer, BufferStatus.REJECTED, reason, outcomes[-1][1] if outcomes else None)


def _run_group(worker, buffer, group: str, lost: threading.Event) -> tuple[str, BufferStatus, str]:
    cfg, store, settings = worker.cfg, worker.store, worker.settings
    t0 = time.perf_counter()
    rows = [(it, st) for it, st in store.group_items(group) if it.image_sha256]
    mine = [it for it, _ in rows if it.buffer_id == buffer.id]
    earlier = [it for it, st in rows if it.buffer_id != buffer.id and st in (BufferStatus.PROMOTED, BufferStatus.REJECTED)]
    pending = [it for it in earlier if it.learned_in is None and it.refusals < MAX_REFUSALS]
    if pending_held := [it.id for it in pending if it.split == Split.HELDOUT]:
        store.train_on(pending_held)  # trained now, so no longer held out
    train = [it for it in mine if it.split == Split.TRAIN] + pending
    held = [it for it in mine if it.split == Split.HELDOUT]
    pooled_held = [it for it in earlier if it.split == Split.HELDOUT and it.learned_in is not None] + held
    learned = [it for it in earlier if it.learned_in is not None and it.split == Split.TRAIN]
    current, system = served_system(store)
    continues = group in system.adapters
    author_of = store.item_authors([it.id for it, _ in rows])
    run_authors = sorted({author_of.get(it.id, "") for it in train})
    evidence = evidence_by_author(earlier, author_of, set(run_authors))
    replay_items = learned[-cfg.group_pool:] if continues else []
    share = cfg.group_replay if cfg.group_replay is not None else len(replay_items) / max(1, len(replay_items) + len(train))

    codebook = worker_codebook(worker.adapters_dir)
    revision = f"{group}_b{buffer.id}_{int(time.time())}"
    stage = staging_dir(worker.adapters_dir, f"buffer{buffer.id}-{group}-{revision}")
    tcfg = TuneConfig(method=settings.tune_method if continues else "seq", steps=settings.learn_steps, lr=cfg.lr,
                      batch_size=min(cfg.batch_size, max(4, len(train) + len(replay_items))), seed=cfg.seed + buffer.id,
                      replay_fraction=min(0.9, share))
    worker.state(WorkerActivity.TRAINING, buffer=buffer.id, group=group, step=0, total=tcfg.steps)

    def progress(step: int, total: int, loss: float) -> None:
        if lost.is_set():
            raise LeaseLost(f"lost the lease on buffer {buffer.id}")
        worker.state(WorkerActivity.TRAINING, buffer=buffer.id, group=group, step=step, total=total, loss=round(loss, 4))

    samples = worker.samples
    with tempfile.TemporaryDirectory(prefix="llaca-start-") as scratch:
        init, start = system.adapters.get(group), None
        if not continues:  # a new group starts where the method says (llaca.groups.start)
            kind = GROUP_METHODS[settings.learn_method]
            taught = {g: samples(_learned(store, g)[:PROBE_SAMPLES]) for g in system.adapters} if kind in ("scene", "transfer") else None
            start = start_adapter(kind, worker.lm.model, worker.lm.processor, system.adapters, samples(train),
                                  codebook=codebook, instructions=[it.question for it in train],
                                  shared=worker.shared, scratch=Path(scratch), group_samples=taught)
            init = start.adapter
        result = worker.train(f"buffer{buffer.id}", samples(train), samples(replay_items), tcfg, init, stage / group, progress)
    prior = system.authors.get(group, []) if continues else []
    candidate = system.replaced(group, stage / group, revision, codebook, authors=sorted({*prior, *run_authors}))

    worker.state(WorkerActivity.EVALUATING, buffer=buffer.id, group=group)
    held_by_group: dict[str, list] = defaultdict(list)
    for g, its in store.grouped_heldout_items().items():
        if g != group and g in system.adapters:
            held_by_group[g] = [it for it in its if it.image_sha256 and it.learned_in is not None]
    taught = train[:MAX_TAUGHT_CHECK]
    named = ([(f"taught (buffer {buffer.id})", TAUGHT, samples(taught)), (f"group {group}", NEW, samples(pooled_held))]
             + [(f"group {g}", EARLIER, samples(its)) for g, its in sorted(held_by_group.items()) if its]
             + [(f"what {a} taught", CONFLICT, samples(its)) for a, its in evidence]
             + [(p.name, PROBE, p.samples) for p in worker.probes])
    sets = [s for _, _, s in named]
    cand_hits, cur_hits = (routed_hits(worker.lm, s, sets, worker.shared) for s in (candidate, system))
    report = decide_paired([PairedSet(n, k, c, o) for (n, k, _), c, o in zip(named, cand_hits, cur_hits)],
                           settings.guard_margin)
    if lost.is_set():
        raise LeaseLost(f"lost the lease on buffer {buffer.id} while evaluating")
    held_right = {it.id for it, hit in zip(pooled_held, cand_hits[1]) if hit}
    first = len(named) - len(worker.probes) - len(evidence)
    contradicted = [it.id for k, (_, its) in enumerate(evidence)
                    for it, c, o in zip(its, cand_hits[first + k], cur_hits[first + k]) if o and not c]
    conflict = not report.passed and "conflict:" in report.reason
    items = {"trained": [it.id for it in train], "heldout_right": sorted(i.id for i in held if i.id in held_right),
             "heldout_wrong": sorted(i.id for i in held if i.id not in held_right)}

    with groups_lock(worker.adapters_dir):
        latest, latest_system = served_system(store)
        if (latest.version if latest else None) != (current.version if current else None):
            # another worker promoted meanwhile: a version of another group is kept, and ours is
            # put on top of it (groups share no weights); a new adapter of this very group is not
            if latest_system.trained_in.get(group) != system.trained_in.get(group):
                shutil.rmtree(stage, ignore_errors=True)
                raise GroupChangedMeanwhile(f"group {group} was retrained by another worker during this run")
            candidate = latest_system.replaced(group, stage / group, revision, worker_codebook(worker.adapters_dir))
            current = latest
        if conflict:
            report.reason += (" (their corrections stay learned; an admin can review this run's corrections, or "
                              "forget the author who is wrong)")
        candidate.write(stage)
        worker.checkpoint("before-publish")
        name, final = worker.publish(stage, buffer.id, report.passed)
        worker.checkpoint("after-publish")
        metrics = AdapterMetrics.for_candidate(
            name, current, buffer, report, [p.name for p in worker.probes],
            {**result.record, "items": items, "revision": revision, "start": start.record() if start else None},
            time.perf_counter() - t0, group=group)
        store.register_adapter(name, current.version if current else None, final, settings.learn_method, metrics.to_dict(),
                               library_versions())
        worker.checkpoint("after-register")
        if report.passed:
            store.promote_adapter(name)
            worker.checkpoint("after-promote")
        else:
            store.reject_adapter(name, report.reason)
    _record_outcome(store, name, report.passed, report.reason, items)
    if conflict:  # the admin decides who is right; until then no run of the group trains on these again
        ids = [it.id for it in train] + items["heldout_wrong"] + items["heldout_right"]
        why = (f"{', '.join(run_authors)}'s corrections contradict what {', '.join(a for a, _ in evidence)} taught "
               f"group {group} ({report.reason})")
        if settings.teach == "review":
            store.hold_conflicts(ids, why, contradicted)
        else:
            store.set_aside(ids, f"conflict: {why}")
    outcome = BufferStatus.PROMOTED if report.passed else BufferStatus.REJECTED
    log.info("buffer %s group %s: %s %s (%s)", buffer.id, group, name, outcome, report.reason)
    return name, outcome, report.reason
