"""Continuous scheduling: each micro-batch taken from the pending pairs of every job taken so far.

:meth:`Reranker.rerank` scores a fixed window of jobs and answers them when the whole window is
done, so a small job that arrives while large ones are scored waits for all of them. The
:class:`Scheduler` decides at every step instead, as Orca's iteration-level scheduling and vLLM's
continuous batching do for generation. Jobs are submitted as they arrive; each :meth:`~Scheduler.step`
does one unit of work and returns what it finished:

1. it takes in the jobs submitted since the last step, and gives up those whose deadline passed
   before any work on them began (``expired``);
2. it picks the job that goes next by the fair order below (the *anchor*);
3. if the anchor is not prepared yet, it prepares it; so it does with the next job not prepared
   when the anchor is large and its pool (4.) holds fewer pairs than it should. A job the policy
   cuts runs its first stage, alone, and the step ends there (over a thousand documents this is
   the one long step; jobs that arrive meanwhile count at the next one). A job that is not cut
   has its pairs tokenized, with the other waiting jobs that are not cut, up to
   :data:`PREPARE_DOCUMENTS` documents;
4. it runs one micro-batch. A small job (its pairs fit one batch) that no other small job
   rivals in urgency goes whole: all its pairs at its longest one's width, the room left filled
   with the next jobs' pairs no longer than that, the longest first. Small jobs as urgent as each
   other (within :data:`URGENCY_SLACK_PAIRS`) are cut by length together, the longest first, with
   the next jobs that fit the backlog budget up to :data:`POOL_ROOMS` batches' worth, in
   micro-batches of up to that budget (the runner's ``max_backlog_batch_tokens``, twice the
   ordinary one on CPU: these jobs wait for each other anyway), so that a backlog pads as little
   and runs as many pairs per call as a window did. A large job gives its longest pairs of one
   width class, and the room they leave goes to the next jobs' pairs of that class, then its own
   next ones, then theirs: it goes on at nearly its own pace, and the batch pads little. A job
   with at most :data:`OWN_FIRST_ROOMS` batches' worth of pairs left (a request of 12-15
   documents, or a large one near its end) fills the room with its own next pairs first, so that
   it is done in two batches, not one per width class. A backend with shape buckets (OpenVINO)
   gets a bucketed width and size;
5. every job whose last pair was scored is finished at once, with its outcome.

What the windows did well is kept: each text is tokenized once while jobs that use it are live
(one token cache, which the first stages fill too), identical (query, document) pairs of live jobs
are scored once, micro-batches stay within the token budget, and OpenVINO sees bucketed shapes.

**The fair order** (``policy``): a higher ``priority`` first; then

- ``aged`` (the default): the earliest *virtual deadline*, the time the job arrived plus
  :data:`AGEING_S_PER_PAIR` for every pair it has left (up to :data:`AGEING_MAX_PAIRS`), or its
  own deadline when that is earlier. It ranks by remaining work, so a small job overtakes large
  ones, yet waiting counts: a job of ``n`` pairs left goes before a newer one of ``m`` once it has
  waited ``(n - m) x`` :data:`AGEING_S_PER_PAIR`, so none is starved. Past the cap, size no longer
  counts: large jobs go in the order they arrived, so the largest are not the ones every other
  large job overtakes;
- ``shortest``: the fewest pairs left, however long a job has waited;
- ``fifo``: the order of arrival (what windows did).

Ties go to the earlier arrival. ``step`` is called from one thread (the engine's); ``submit``
may be called from any.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from engines.batching import SIZE_BUCKETS, BatchRunner, PreparedPairs, bucket_width
from engines.config import SCHEDULER_POLICIES
from engines.chunking import JobTexts, job_texts, texts_outcome
from engines.first_stage import ranked
from engines.outcome import RerankOutcome
from engines.policy import JobPlan, RerankJob
from engines.reranker import Reranker

POLICIES = SCHEDULER_POLICIES
#: How much waiting one pair of remaining work is worth in the ``aged`` order (seconds).
AGEING_S_PER_PAIR = 0.1
#: Remaining work counts in the ``aged`` order up to this many pairs. Small jobs still overtake
#: large ones, but large jobs go in arrival order among themselves: uncapped, a 100-pair job was
#: overtaken by every 60-pair one that arrived within 4 s after it, which made the tail of the
#: largest ones long.
AGEING_MAX_PAIRS = 50
#: Fillers are looked for among the next jobs of the fair order until there are this many times
#: the room left: enough to find pairs of a fitting length, few enough to respect the order.
FILL_LOOKAHEAD = 4
#: Jobs within this many pairs of remaining work (or its worth in waiting) of the most urgent one
#: are as urgent: their pairs are batched together by length, as a window's were, so that a
#: backlog of small jobs is scored with little padding. A job alone in its urgency gets all its
#: pairs in one micro-batch where they fit.
URGENCY_SLACK_PAIRS = 5
#: A backlog of small jobs is cut by length from this many batches' worth of their pairs; jobs
#: behind a large one are prepared until there are this many, so that its batches find fillers.
POOL_ROOMS = 32
#: A large job with at most this many micro-batches' worth of pairs left takes its own pairs first.
OWN_FIRST_ROOMS = 2
#: Documents tokenized in one step for jobs that are not cut (more wait for the next step).
PREPARE_DOCUMENTS = 512
#: The shared token cache is started afresh past this many texts (the live jobs' pairs keep
#: their own ids; only sharing with jobs not yet prepared is lost).
TOKEN_CACHE_TEXTS = 10_000


@dataclass(eq=False)
class _Slot:
    """One distinct (query, document) pair of the live jobs, scored once for all that need it."""

    prepared: PreparedPairs
    row: int
    length: int
    pair: tuple[str, str]
    owner: _Ticket  # the job that schedules it
    waiters: list[_Ticket]  # the jobs that need its score, once per document that asks for it
    score: float = math.nan


@dataclass(eq=False)
class _Ticket:
    key: Hashable
    job: RerankJob
    plan: JobPlan
    priority: int
    arrived: float  # on the scheduler's clock
    deadline_at: float | None  # the job's own deadline, on the scheduler's clock
    deadline: float | None  # the same as wall-clock epoch seconds
    started: float | None = None  # first work on it
    first: np.ndarray | None = None  # first-stage scores, when cut
    selected: np.ndarray | None = None  # the documents the cross-encoder scores (None: not prepared)
    texts: JobTexts | None = None  # their pairs: a document whole, or each of its chunks
    slots: list[_Slot] = field(default_factory=list)  # one per pair of texts
    pending: list[_Slot] = field(default_factory=list)  # owned and not yet scored, longest first
    left: int = 0  # slots not yet scored

    @property
    def remaining(self) -> int:
        return self.left if self.selected is not None else self.plan.pairs


@dataclass
class Finished:
    """A job done: its outcome, how long it waited for its first work and how long it took then."""

    key: Hashable
    outcome: RerankOutcome
    queued_s: float
    worked_s: float


@dataclass
class StepResult:
    """What one step did.

    Attributes:
        kind: ``"idle"`` (nothing to do), ``"first_stage"``, ``"micro_batch"`` or ``"job"`` (a
            whole job of the bi-encoder engine).
        finished / failed / expired: jobs done, jobs the engine failed on (with the error), jobs
            whose deadline passed before any work began.
        pairs / requests: pairs in the micro-batch, and the jobs they belong to.
        real_tokens / padded_tokens: the micro-batch's tokens without and with padding.
        anchor_waited_s: how long the job the step chose had waited since it arrived.
    """

    kind: str = "idle"
    finished: list[Finished] = field(default_factory=list)
    failed: list[tuple[Hashable, BaseException]] = field(default_factory=list)
    expired: list[Hashable] = field(default_factory=list)
    pairs: int = 0
    requests: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    anchor_waited_s: float = 0.0


class FairOrder:
    """Which job goes next (see the module's docstring): ``rank`` sorts them, and jobs within
    ``slack`` of each other's rank (:data:`URGENCY_SLACK_PAIRS`' worth) are as urgent."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.slack = URGENCY_SLACK_PAIRS * (1.0 if policy == "shortest" else AGEING_S_PER_PAIR)

    def rank(self, ticket: _Ticket) -> tuple[int, float, float]:
        """The sort key: higher priority first, then the policy's measure, then arrival."""
        if self.policy == "fifo":
            second = ticket.arrived
        elif self.policy == "shortest":
            second = float(ticket.remaining)
        else:
            second = ticket.arrived + min(ticket.remaining, AGEING_MAX_PAIRS) * AGEING_S_PER_PAIR
            if ticket.deadline_at is not None:
                second = min(second, ticket.deadline_at)
        return (-ticket.priority, second, ticket.arrived)


class Scheduler:
    """Schedules the pairs of jobs for ``reranker``'s cross-encoder (see the module's docstring);
    ``policy`` is the fair order (``reranker.config.scheduler_policy`` when None)."""

    def __init__(self, reranker: Reranker, policy: str | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        policy = policy or reranker.config.scheduler_policy
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.reranker = reranker
        self.runner = reranker.cross_encoder
        self.policy = policy
        self.order = FairOrder(policy)
        self.clock = clock
        self.wall_clock = wall_clock
        self._inbox: list[_Ticket] = []
        self._lock = threading.Lock()
        self._live: list[_Ticket] = []
        self._unscored: dict[tuple[str, str], _Slot] = {}
        self._tokens = self.runner.encoder.new_cache() if self.runner is not None else None

    def submit(self, key: Hashable, job: RerankJob, plan: JobPlan, priority: int = 0,
               deadline: float | None = None) -> None:
        """Adds a job (``plan`` is ``reranker.plan(job)``); ``deadline`` in epoch seconds."""
        now = self.clock()
        deadline_at = None if deadline is None else now + (deadline - self.wall_clock())
        ticket = _Ticket(key, job, plan, int(priority), now, deadline_at, deadline)
        with self._lock:
            self._inbox.append(ticket)

    @property
    def busy(self) -> bool:
        """Whether a job is waiting or in progress."""
        with self._lock:
            return bool(self._inbox or self._live)

    def step(self) -> StepResult:
        """Does one unit of work (see the module's docstring) and returns what it finished."""
        with self._lock:
            new, self._inbox = self._inbox, []
        self._live.extend(new)
        result = StepResult()
        self._expire(result)
        if not self._live:
            return result
        order = sorted(self._live, key=self.order.rank)
        # A job whose pairs are all shared with (and scheduled by) other jobs is not a candidate.
        anchor = next(t for t in order if t.selected is None or t.pending)
        unprepared = anchor if anchor.selected is None or self.runner is None else self._pool_short(anchor, order)
        result.anchor_waited_s = self.clock() - (unprepared or anchor).arrived
        if self.runner is None:
            self._whole_job(anchor, result)
        elif unprepared is not None and unprepared.plan.prefilter:
            self._first_stage(unprepared, result)
        else:
            if unprepared is not None:
                self._prepare([t for t in order if t.selected is None and not t.plan.prefilter], result)
                order = sorted(self._live, key=self.order.rank)
                anchor = next((t for t in order if t.pending), None)
            if anchor is not None:
                self._micro_batch(anchor, order, result)
        if not self._live and self._tokens is not None and self._tokens.entries:
            self._tokens = self.runner.encoder.new_cache()  # idle: nothing left to share
        return result

    def _pool_short(self, anchor: _Ticket, order: list[_Ticket]) -> _Ticket | None:
        """The job to prepare before a large ``anchor``'s next micro-batch, if any: the room its
        width class leaves is filled from the pending pairs of the jobs behind it, and a job not
        prepared yet has none (unprepared, 100-pair jobs were batched each alone, with twice a
        window's padding). A small anchor goes at once."""
        max_tokens = self.runner.max_batch_tokens
        if _fits(anchor, max_tokens):
            return None
        if sum(len(t.pending) for t in order) >= POOL_ROOMS * (max_tokens // anchor.pending[0].length):
            return None
        return next((t for t in order if t.selected is None and t.priority == anchor.priority), None)

    def _expire(self, result: StepResult) -> None:
        now = self.wall_clock()
        for ticket in [t for t in self._live if t.started is None and t.deadline is not None and t.deadline <= now]:
            self._live.remove(ticket)
            result.expired.append(ticket.key)

    def _start(self, ticket: _Ticket) -> None:
        if ticket.started is None:
            ticket.started = self.clock()

    # -- preparing jobs -------------------------------------------------------------------------------
    def _whole_job(self, ticket: _Ticket, result: StepResult) -> None:
        """The bi-encoder engine has no pairs to schedule: one job is one step."""
        result.kind = "job"
        self._start(ticket)
        try:
            [outcome] = self.reranker.rerank([ticket.job], [ticket.plan])
        except Exception as exc:
            self._fail(ticket, exc, result)
            return
        self._live.remove(ticket)
        result.finished.append(self._finished(ticket, outcome))

    def _first_stage(self, ticket: _Ticket, result: StepResult) -> None:
        result.kind = "first_stage"
        self._start(ticket)
        self._refresh_tokens()
        try:
            [scores] = self.reranker.score_first_stage(ticket.plan.method, [ticket.job], [ticket.plan], self._tokens)
            ticket.first = np.asarray(scores, dtype=np.float32)
            ticket.selected = np.sort(ranked(np.arange(ticket.plan.documents), ticket.first)[: ticket.plan.keep])
            self._add_pairs([ticket])
        except Exception as exc:
            self._fail(ticket, exc, result)
            return
        self._finish_if_done(ticket, result)  # keep 0: the first stage's ranking is all

    def _prepare(self, waiting: list[_Ticket], result: StepResult) -> None:
        """Tokenizes the pairs of jobs that are not cut, in the fair order, in one batch."""
        batch, documents = [], 0
        for ticket in waiting:
            if batch and documents + ticket.plan.documents > PREPARE_DOCUMENTS:
                break
            batch.append(ticket)
            documents += ticket.plan.documents
        for ticket in batch:
            self._start(ticket)
            ticket.selected = np.arange(ticket.plan.documents)
        self._refresh_tokens()
        try:
            self._add_pairs(batch)
        except Exception as exc:
            for ticket in batch:
                self._fail(ticket, exc, result)
            return
        for ticket in batch:
            self._finish_if_done(ticket, result)

    def _refresh_tokens(self) -> None:
        if len(self._tokens.entries) > TOKEN_CACHE_TEXTS:
            self._tokens = self.runner.encoder.new_cache()

    def _add_pairs(self, tickets: list[_Ticket]) -> None:
        """Slots for the pairs of the selected documents of ``tickets`` (a document whole, or each
        of its chunks): a pair already waiting in a live job is shared, the others are tokenized
        together."""
        queries: dict[str, int] = {}
        documents: dict[str, int] = {}
        fresh: dict[tuple[str, str], list[_Ticket]] = {}
        for ticket in tickets:
            job, plan = ticket.job, ticket.plan
            ticket.texts = job_texts(self.runner, job.query, plan.instruction, job.documents, ticket.selected,
                                     plan.chunking, self._tokens)
            for text in ticket.texts.texts:
                pair = (ticket.texts.query, text)
                if pair not in self._unscored and pair not in fresh:
                    fresh[pair] = [ticket]
                    queries.setdefault(pair[0], len(queries))
                    documents.setdefault(pair[1], len(documents))
        if fresh:
            pairs = list(fresh)
            prepared = self.runner.prepare_pairs(list(queries), list(documents),
                                                 np.array([queries[q] for q, _ in pairs], dtype=np.int64),
                                                 np.array([documents[d] for _, d in pairs], dtype=np.int64), self._tokens)
            self.runner.count_tokenizing(prepared.tokenize_s)
            for row, pair in enumerate(pairs):
                owner = fresh[pair][0]
                slot = _Slot(prepared, row, int(prepared.lengths[row]), pair, owner, [])
                self._unscored[pair] = slot
                owner.pending.append(slot)
        for ticket in tickets:
            ticket.slots = [self._unscored[(ticket.texts.query, text)] for text in ticket.texts.texts]
            for slot in ticket.slots:
                slot.waiters.append(ticket)
            ticket.left = len(ticket.slots)
            ticket.pending.sort(key=lambda s: -s.length)

    # -- micro-batches --------------------------------------------------------------------------------
    def _micro_batch(self, anchor: _Ticket, order: list[_Ticket], result: StepResult) -> None:
        runner = self.runner
        chosen, width, size = _compose(anchor, order, self.order, runner)
        for slot in chosen:
            self._start(slot.owner)
        result.kind = "micro_batch"
        result.pairs = len(chosen)
        result.requests = len({id(ticket) for slot in chosen for ticket in slot.waiters})
        parts: dict[int, tuple[PreparedPairs, list[int], list[_Slot]]] = {}
        for slot in chosen:
            parts.setdefault(id(slot.prepared), (slot.prepared, [], []))
            parts[id(slot.prepared)][1].append(slot.row)
            parts[id(slot.prepared)][2].append(slot)
        in_order = [slot for _, _, slots in parts.values() for slot in slots]
        result.real_tokens = sum(slot.length for slot in chosen)
        result.padded_tokens = (size or len(chosen)) * width
        try:
            scores = runner.run_micro_batch([(prepared, np.asarray(rows)) for prepared, rows, _ in parts.values()],
                                            width, size)
        except Exception as exc:
            for ticket in dict.fromkeys(w for slot in chosen for w in slot.waiters):
                self._fail(ticket, exc, result)
            return
        self._scored(in_order, scores, result)

    def _scored(self, slots: list[_Slot], scores: np.ndarray, result: StepResult) -> None:
        done = {id(slot) for slot in slots}
        for owner in dict.fromkeys(slot.owner for slot in slots):
            owner.pending = [s for s in owner.pending if id(s) not in done]
        for slot, score in zip(slots, scores):
            slot.score = float(score)
            self._unscored.pop(slot.pair, None)
            for ticket in slot.waiters:
                ticket.left -= 1
        for ticket in dict.fromkeys(w for slot in slots for w in slot.waiters):
            self._finish_if_done(ticket, result)

    # -- endings ----------------------------------------------------------------------------------------
    def _finish_if_done(self, ticket: _Ticket, result: StepResult) -> None:
        if ticket.left > 0 or ticket not in self._live:
            return
        self._live.remove(ticket)
        result.finished.append(self._finished(ticket, _outcome(ticket, self.reranker.activation)))

    def _finished(self, ticket: _Ticket, outcome: RerankOutcome) -> Finished:
        now = self.clock()
        started = ticket.started if ticket.started is not None else now
        return Finished(ticket.key, outcome, queued_s=started - ticket.arrived, worked_s=now - started)

    def _fail(self, ticket: _Ticket, exc: BaseException, result: StepResult) -> None:
        """Gives up ``ticket``; pairs it owned that other live jobs wait for pass to one of them."""
        if ticket not in self._live:
            return
        self._live.remove(ticket)
        result.failed.append((ticket.key, exc))
        for slot in ticket.pending:
            slot.waiters = [w for w in slot.waiters if w is not ticket]
            if slot.waiters:
                slot.owner = slot.waiters[0]
                slot.owner.pending.append(slot)
                slot.owner.pending.sort(key=lambda s: -s.length)
            else:
                self._unscored.pop(slot.pair, None)
        for slot in ticket.slots:
            slot.waiters = [w for w in slot.waiters if w is not ticket]
        ticket.pending = []


def _compose(anchor: _Ticket, order: list[_Ticket], fair: FairOrder,
             runner: BatchRunner) -> tuple[list[_Slot], int, int | None]:
    """The pairs of ``anchor``'s micro-batch, their padded width, and the batch's bucketed size
    (None without shape buckets): the module's docstring, step 4."""
    small = _fits(anchor, runner.max_batch_tokens)
    pool, contested = ([anchor], False) if not small else \
        _small_pool(anchor, order, fair, runner.max_batch_tokens, runner.max_backlog_batch_tokens)
    whole = small and not contested
    if whole:
        # A small job with no small rival in its urgency goes whole: all its pairs at its longest
        # one's width, the room left filled with the next jobs' pairs that fit, longest first.
        longest, own = anchor.pending[0].length, list(anchor.pending)
    elif small:
        # Small jobs as urgent as each other: their pairs cut by length, as a window's were.
        own = sorted((s for t in pool for s in t.pending), key=lambda s: -s.length)
        longest = own[0].length
    else:
        # A large job: its longest pairs, those of one width class first (see the fillers).
        longest = anchor.pending[0].length
        top = bucket_width(longest, runner.max_length)
        own = [s for s in anchor.pending if bucket_width(s.length, runner.max_length) == top]
    width = bucket_width(longest, runner.max_length) if runner.shape_buckets else longest
    room = _room(runner, runner.max_batch_tokens, width)
    # A backlog's jobs wait for each other anyway: its own pairs may fill the backlog budget (more
    # pairs per call); the next jobs' pairs only ever fill the ordinary room.
    chosen = own[: _room(runner, runner.max_backlog_batch_tokens, width) if small and not whole else room]
    fillers = _fillers(pool, order, width, FILL_LOOKAHEAD * room)
    if not small and len(anchor.pending) <= OWN_FIRST_ROOMS * room:
        # Two batches' worth left or less (a request a little past one batch, a large one near
        # its end): its own next pairs first, so that it is done in two.
        fillers = anchor.pending[len(own):] + fillers
    elif not small:
        # The room a large job's width class leaves goes to the next jobs' pairs of that class
        # (no more padding), then to its own next pairs (it goes on), then to theirs.
        same: list[_Slot] = []
        other: list[_Slot] = []
        for slot in fillers:
            (same if bucket_width(slot.length, runner.max_length) == top else other).append(slot)
        fillers = same + anchor.pending[len(own):] + other
    chosen += fillers[: max(0, room - len(chosen))]
    size = None
    if runner.shape_buckets:
        finishing = len(own) if whole and len(own) <= room else 0  # the anchor is done with this batch
        chosen, size = _bucketed(chosen, finishing, fillers[room - min(room, len(own)):], runner.max_batch_pairs)
    return chosen, width, size


def _room(runner: BatchRunner, max_tokens: int, width: int) -> int:
    """How many pairs of ``width`` tokens a micro-batch of ``max_tokens`` holds (at least one)."""
    return max(1, min(runner.max_batch_pairs, max_tokens // width))


def _fits(ticket: _Ticket, max_tokens: int) -> bool:
    """Whether the job's pending pairs fit one micro-batch at their longest one's width."""
    return ticket.pending[0].length * len(ticket.pending) <= max_tokens


def _small_pool(anchor: _Ticket, order: list[_Ticket], fair: FairOrder,
                max_tokens: int, backlog_tokens: int) -> tuple[list[_Ticket], bool]:
    """The jobs a small anchor's micro-batch is cut from, the anchor first, and whether another
    small job is as urgent as the anchor (then they are cut by length together). The pool: the
    jobs with pairs pending within the fair order's slack of the anchor (at its priority); and,
    once that is more than the anchor, the next jobs that fit the backlog budget
    (``backlog_tokens``) too, until they hold :data:`POOL_ROOMS` batches' worth of pairs, so that
    a backlog pads as little as a window did. A large job never joins but as urgent, so it never
    slows a small one."""
    priority, key, _ = fair.rank(anchor)
    room = backlog_tokens // anchor.pending[0].length
    pool, pairs, contested = [anchor], len(anchor.pending), False
    for ticket in order:
        if ticket is anchor or not ticket.pending or fair.rank(ticket)[0] != priority:
            continue
        urgent = fair.rank(ticket)[1] <= key + fair.slack
        backlog = len(pool) > 1 and pairs < POOL_ROOMS * room and _fits(ticket, backlog_tokens)
        if not (urgent or backlog):
            continue
        contested = contested or (urgent and _fits(ticket, max_tokens))
        pool.append(ticket)
        pairs += len(ticket.pending)
    return pool, contested


def _fillers(urgent: list[_Ticket], order: list[_Ticket], width: int, wanted: int) -> list[_Slot]:
    """Pending pairs no longer than ``width`` of the jobs after the ``urgent`` ones in the order,
    from the next jobs until ``wanted`` are found, the longest first."""
    skip = {id(ticket) for ticket in urgent}
    found: list[_Slot] = []
    for ticket in order:
        if id(ticket) in skip or not ticket.pending:
            continue
        found.extend(slot for slot in ticket.pending if slot.length <= width)
        if len(found) >= wanted:
            break
    found.sort(key=lambda slot: -slot.length)
    return found


def _bucketed(chosen: list[_Slot], own: int, spare: list[_Slot], max_pairs: int) -> tuple[list[_Slot], int]:
    """A size from SIZE_BUCKETS for ``chosen``, whose first ``own`` pairs finish the anchor (0 when
    this batch cannot finish it anyway). Pairs are dropped from the end to round down when that
    keeps those; otherwise ``spare`` pairs round it up (the token budget may then be passed by up to
    a bucket step, so that a small job is not split across two micro-batches), and copies of a row
    pad what they cannot."""
    count = len(chosen)
    down = max(b for b in SIZE_BUCKETS if b <= count)
    up = min(b for b in SIZE_BUCKETS if b >= count)
    if own <= down or up > max_pairs:
        return chosen[:down], down
    return chosen + spare[: up - count], up


def _outcome(ticket: _Ticket, activation: str) -> RerankOutcome:
    """A finished job's outcome, as ``Reranker.rerank`` builds it."""
    return texts_outcome(ticket.plan, ticket.texts, [slot.score for slot in ticket.slots], ticket.first, activation,
                         ticket.job.raw_scores)
