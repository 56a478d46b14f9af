"""Forgetting an author (or one correction) in the served system.

The store deletes the rows (``FeedbackStore.forget_author`` / ``forget_correction``); this
module takes their influence out of the served adapters, in two steps:

1. **At once** (``drop_groups``, in the app's request, no model needed): publish and promote
   a version of the routed system without the groups the forgotten corrections trained (by
   the version's provenance, ``RoutedSystem.authors``, and the deleted items' groups). Their
   questions go to the base model from the next answer; every other group is hard-linked
   unchanged (the same inode), so no other answer changes: groups share no weights.
2. **Then** (``retrain``, a job the learning worker runs before any buffer): each dropped
   group that still has learned corrections of other authors is trained again, fresh from the
   base model, on those corrections alone, and goes through the guard (it must fit what it is
   taught; other groups and the base probes must hold). A group that passes is served again;
   one that does not stays dropped, and its corrections wait for the group's next buffer.
"""

from __future__ import annotations

import logging
import shutil
import time
from types import SimpleNamespace

from feedback_store import WorkerActivity
from llaca.learn.tuner import TuneConfig, library_versions
from llaca.worker.adapter_files import publish_first_free, staging_dir, version_names
from llaca.worker.guard import (
    EARLIER,
    NEW,
    PROBE,
    TAUGHT,
    GuardReport,
    PairedSet,
    decide_paired,
)
from llaca.worker.policy import groups_lock, routed_hits, served_system, worker_codebook
from llaca.worker.record import AdapterMetrics

log = logging.getLogger(__name__)

MAX_TAUGHT_CHECK = 64
FORGET_METHOD = "forget"  # the method recorded for a version made by forgetting (dropping or retraining groups)


def _register(store, name: str, current, final, report: GuardReport, probes: list[str], seconds: float, extra: dict):
    metrics = AdapterMetrics.for_candidate(name, current, SimpleNamespace(id=0, session_id=""), report, probes,
                                           extra, seconds)
    store.register_adapter(name, current.version if current else None, final, FORGET_METHOD, metrics.to_dict(),
                           library_versions())
    store.promote_adapter(name)


def drop_groups(store, adapters_dir, groups, reason: str) -> str | None:
    """Publish and promote the served routed system without ``groups``; the new version's name,
    or None when the served version has none of them."""
    with groups_lock(adapters_dir):
        current, system = served_system(store)
        gone = [g for g in groups if g in system.adapters]
        if current is None or not gone:
            return None
        stage = staging_dir(adapters_dir, f"forget-{int(time.time() * 1000)}")
        system.without(gone).write(stage)
        name, final = publish_first_free(stage, adapters_dir, version_names(store.next_adapter_version()))
        report = GuardReport(True, f"passed: groups {', '.join(gone)} dropped ({reason}); no other group changes "
                                   "(groups share no weights)", 0.0)
        _register(store, name, current, final, report, [], 0.0, {"forget": reason, "dropped": gone})
    log.info("%s: groups %s dropped, %s serves", reason, gone, name)
    return name


def retrain(worker, job) -> str:
    """Train each of the job's groups again from its remaining learned corrections (module
    docstring, step 2); returns what was done."""
    store, settings, cfg = worker.store, worker.settings, worker.cfg
    t0 = time.perf_counter()
    current, system = served_system(store)
    codebook = worker_codebook(worker.adapters_dir)
    revision = f"job{job.id}_{int(time.time())}"
    stage = staging_dir(worker.adapters_dir, f"job{job.id}-{revision}")
    candidate, trained = system, []
    for group in job.groups:
        if group in system.adapters:
            continue  # served again meanwhile (a newer buffer of the group): nothing to restore
        items = [it for it, _ in store.group_items(group) if it.image_sha256 and it.learned_in is not None]
        if not items:
            continue
        worker.state(WorkerActivity.TRAINING, job=job.id, group=group, step=0, total=settings.learn_steps)
        tcfg = TuneConfig(method="seq", steps=settings.learn_steps, lr=cfg.lr, seed=cfg.seed + job.id,
                          batch_size=min(cfg.batch_size, max(4, len(items))))
        worker.train(f"job{job.id}", worker.samples(items), [], tcfg, None, stage / group,
                      lambda step, total, loss: worker.state(WorkerActivity.TRAINING, job=job.id, group=group,
                                                             step=step, total=total, loss=round(loss, 4)))
        authors = sorted(set(store.item_authors([it.id for it in items]).values()))
        candidate = candidate.replaced(group, stage / group, revision, codebook, authors=authors)
        trained.append((group, items))
    if not trained:
        shutil.rmtree(stage, ignore_errors=True)
        return "nothing left to retrain"
    worker.state(WorkerActivity.EVALUATING, job=job.id)
    samples = worker.samples
    others = {g: [it for it in its if it.image_sha256 and it.learned_in is not None]
              for g, its in store.grouped_heldout_items().items() if g in system.adapters}
    named = ([(f"taught (group {g}, retrained)", TAUGHT, samples(its[:MAX_TAUGHT_CHECK])) for g, its in trained]
             + [(f"group {g}", NEW, samples([it for it in its if it.split == "heldout"])) for g, its in trained]
             + [(f"group {g}", EARLIER, samples(its)) for g, its in sorted(others.items()) if its]
             + [(p.name, PROBE, p.samples) for p in worker.probes])
    sets = [s for _, _, s in named]
    cand, cur = (routed_hits(worker.lm, s, sets, worker.shared) for s in (candidate, system))
    report = decide_paired([PairedSet(n, k, c, o) for (n, k, _), c, o in zip(named, cand, cur)], settings.guard_margin)
    if not report.passed:
        for group, items in trained:
            store.mark_pending([it.id for it in items],
                               f"group {group} was retrained after a forget and refused ({report.reason}); "
                               "it is trained again with the group's next corrections")
        shutil.rmtree(stage, ignore_errors=True)
        return f"retraining refused, groups stay dropped: {report.reason}"
    with groups_lock(worker.adapters_dir):
        latest, latest_system = served_system(store)
        if (latest.version if latest else None) != (current.version if current else None):
            for group, _ in trained:  # build on what was promoted meanwhile
                latest_system = latest_system.replaced(group, stage / group, revision, codebook,
                                                       authors=candidate.authors[group])
            candidate, current = latest_system, latest
        candidate.write(stage)
        name, final = publish_first_free(stage, worker.adapters_dir, version_names(store.next_adapter_version()))
        _register(store, name, current, final, report, [p.name for p in worker.probes], time.perf_counter() - t0,
                  {"job": job.id, "revision": revision})
    log.info("job %s: groups %s retrained, %s serves (%s)", job.id, [g for g, _ in trained], name, report.reason)
    return f"groups {', '.join(g for g, _ in trained)} retrained from their remaining corrections: {name}"

