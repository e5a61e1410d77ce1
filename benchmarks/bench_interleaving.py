"""How many users interleaving needs next to an A/B test, on the demo's worlds, with a known true difference.

The demo's world (synthetic, or ego-Facebook with held-out friendships as the future), its rankers (trained with
the demo's own recipe, ``deploy.demo.training``) and its click model (``examination(position) * P(click)``,
``deploy.demo.simulator``) decide what simulated users click. Rankers run offline: their ONNX graphs score
with the server's own feature code (``ranker_server.features``, ``ranker_server.dataplane.merge_scores``).

Pairs (arm A -> arm B), each with its true effect computed exactly from the model below:
  demo          MMoE on 1% of the impressions -> MMoE + DML on all (the demo's ranking experiment)
  fewer rows    MMoE + DML on all rows -> MMoE + DML on a share of them (``--fewer-rows``: small differences)
  aa            MMoE + DML -> the same model (no difference)

The population: the demo's simulated users; each has a bank of ``--bank`` candidate sets (synthetic: 100
random users, as the demo simulator draws them; ego-Facebook: 100 friends-of-friends who are not friends yet,
topped up with random non-friends, standing in for the demo's retrieval stage). A simulated user is a random
population user making ``--requests`` requests, each a random set from their bank, shown the top 10:
  A/B:           half the users see arm A's top 10, half arm B's; test: CTR (clicks / impressions per user,
                 delta method, relative lift), the demo report's test (``analytics.stats``).
  interleaving:  every user sees the team-draft merge (``ranker_server.interleaving``) of both top 10s under a
                 fair coin per round; each click is credited to its item's team; tests: the sign test and the
                 per-user credit t-test (``analytics.stats.interleaving``).

Experiments are simulated exactly but fast: users are independent and identically distributed, so the
per-user outcome (A/B: total clicks; interleaving: clicks credited to A and to B) has one distribution over
the population, computed exactly (Poisson-binomial over positions, averaged over coins and candidate sets,
convolved over requests, averaged over users); an experiment of N users is one multinomial draw of N users
over those outcomes, then the real tests. ``--check`` runs a direct simulation beside it (per user, per
request: ``interleave`` with a fresh request id, Bernoulli clicks, credit by the reference
``analytics.interleaving.user_preferences``) to show both give the same error rates and power.

Users needed for 80% power (two-sided alpha 0.05, significant in the true direction): sizes double from a
start until power >= 0.8, then three bisection steps in log space; ``--experiments`` runs per size.

Run (results in benchmarks/results/; training is cached under --workdir):
  OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_interleaving.py --world synthetic
  OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_interleaving.py --world ego --data /work/shared/data
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.interleaving import Click, InterleavedExposure, preference_counts, user_preferences  # noqa: E402
from analytics.stats.frequentist.tests import frequentist_test  # noqa: E402
from analytics.stats.interleaving import PreferenceCounts, credit_test, sign_test  # noqa: E402
from analytics.stats.models.settings import FrequentistConfig  # noqa: E402
from analytics.stats.models.statistics import Ratio, SampleMean  # noqa: E402
from deploy.demo.simulator import examination_probability  # noqa: E402
from deploy.demo.training import TrainingBudget, train_ranker  # noqa: E402
from deploy.demo.world import DemoWorld, make_world  # noqa: E402
from models.errors import DataError  # noqa: E402
from ranker_server.config import RuntimeSettings  # noqa: E402
from ranker_server.dataplane import merge_scores  # noqa: E402
from ranker_server.features import ItemTable, build_rows  # noqa: E402
from ranker_server.inference import GraphRows, OnnxRanker  # noqa: E402
from ranker_server.interleaving import interleave, team_draft  # noqa: E402
from ranker_server.package import read_package  # noqa: E402

logger = logging.getLogger("bench_interleaving")
TOP_K = 10
CANDIDATES = 100
ALPHA = 0.05
TASK_WEIGHTS = {"click": 1.0, "rating": 0.1}  # the demo's ranking payloads (deploy/demo/ab.yaml)
ROUNDS = (TOP_K + 1) // 2
COINS = 2**ROUNDS  # every coin sequence of a top-10 team draft, equally likely
AB_TEST = FrequentistConfig(alpha=ALPHA, difference_type="relative")


# ---- models ---------------------------------------------------------------------------------------------


def ranker_names(fewer_rows: list[float]) -> dict[str, tuple[str, float]]:
    """Package name -> (model family, share of the demo's training rows)."""
    names = {"mmoe": ("mmoe", TrainingBudget.control_share), "mmoe+dml": ("mmoe+dml", 1.0)}
    names.update({f"mmoe+dml-{share:.0%}": ("mmoe+dml", share) for share in fewer_rows})
    return names


def train_rankers(world: DemoWorld, repository: Path, fewer_rows: list[float], seed: int) -> dict[str, dict]:
    """The demo's two rankers and DML rankers on fewer rows, trained once and cached in ``repository``."""
    import torch

    torch.set_num_threads(1)
    budget = TrainingBudget(seed=seed)
    names = ranker_names(fewer_rows)
    missing = [n for n in names if not (repository / n / "1" / "manifest.json").is_file()]
    if missing:
        data = world.sample(budget.impressions, seed=budget.seed)
        splits = data.split((0.8, 0.1, 0.1), seed=budget.seed)
        for name in missing:
            family, share = names[name]
            logger.info("training %s (%s on %.0f%% of %d rows)", name, family, share * 100, len(splits.train))
            train_ranker(world, repository, name, family, splits, share, budget)
    return {n: json.loads((repository / n / "1" / "manifest.json").read_text())["metrics"] for n in names}


@dataclass
class Bank:
    """The population: users, their candidate sets, and every model's top-10 of each set."""

    users: np.ndarray  # [P]
    candidates: np.ndarray  # [P, B, C] item ids
    click: np.ndarray  # [P, B, C] ground-truth P(click | user, item), before position bias
    top: dict[str, np.ndarray] = field(default_factory=dict)  # model -> [P, B, K] indexes into candidates


def candidate_sets(world: DemoWorld, users: np.ndarray, bank: int, rng: np.random.Generator) -> np.ndarray:
    """[P, B, C] item ids: random users (synthetic, as the demo simulator), friends-of-friends (ego-Facebook)."""
    n_items = world.n_items
    out = np.empty((len(users), bank, CANDIDATES), np.int64)
    for i, user in enumerate(users):
        if getattr(world, "exclude_friends", False):
            friends = world.friends(int(user))  # type: ignore[attr-defined]
            reached = [world.friends(int(f)) for f in friends]  # type: ignore[attr-defined]
            fof = np.unique(np.concatenate([np.zeros(0, np.int64), *reached]))
            pool = np.setdiff1d(fof, np.append(friends, user))
            others = np.setdiff1d(np.arange(1, n_items + 1), np.concatenate([pool, friends, [user]]))
            for b in range(bank):
                take = rng.choice(pool, min(len(pool), CANDIDATES), replace=False)
                fill = rng.choice(others, CANDIDATES - len(take), replace=False)
                out[i, b] = np.concatenate([take, fill])
        else:
            for b in range(bank):
                out[i, b] = rng.choice(n_items, CANDIDATES, replace=False) + 1
    return out


def score_top(world: DemoWorld, repository: Path, name: str, bank: Bank) -> np.ndarray:
    """[P, B, K] indexes of each candidate set's top 10 under model ``name`` (stable order on ties)."""
    package = read_package(repository / name / "1")
    runtime = RuntimeSettings(providers=("CPUExecutionProvider",), intra_op_threads=1, spinning="off")
    runner = OnnxRanker(str(package.onnx_path), runtime, name)
    table = ItemTable(package)
    tasks = SimpleNamespace(
        task_names=tuple(t.name for t in package.manifest.tasks),
        binary_tasks=tuple(t.type == "binary" for t in package.manifest.tasks),
    )
    p, b, c = bank.candidates.shape
    top = np.empty((p, b, TOP_K), np.int64)
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for i, user in enumerate(tqdm(bank.users, desc=f"scoring {name}", unit="user", mininterval=5)):
        sparse, dense = world.user_features(int(user))
        rows = build_rows(
            package.layout,
            table,
            bank.candidates[i].reshape(-1),
            np.asarray(sparse, np.int64),
            np.asarray(dense, np.float32),
            empty_i,
            empty_f,
        )
        _, merged = merge_scores(tasks, runner.run(GraphRows(rows.sparse, rows.dense)), TASK_WEIGHTS)  # type: ignore[arg-type]
        top[i] = np.argsort(-merged.reshape(b, c), axis=1, kind="stable")[:, :TOP_K]
    return top


# ---- exact per-user outcome distributions ---------------------------------------------------------------


def poisson_binomial(p: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """PMF of the number of successes over the last axis ([..., K] -> [..., K + 1]); ``include`` masks trials."""
    pmf = np.zeros((*p.shape[:-1], p.shape[-1] + 1))
    pmf[..., 0] = 1.0
    for j in range(p.shape[-1]):
        q = p[..., j] if include is None else np.where(include[..., j], p[..., j], 0.0)
        shifted = np.zeros_like(pmf)
        shifted[..., 1:] = pmf[..., :-1] * q[..., None]
        pmf = pmf * (1.0 - q[..., None]) + shifted
    return pmf


def power_of(pmf: np.ndarray, times: int) -> np.ndarray:
    """The PMF (any number of axes) of the sum of ``times`` independent draws from ``pmf``."""
    out = pmf
    for _ in range(times - 1):
        out = np.clip(signal.fftconvolve(out, pmf), 0.0, None)  # FFT round-off can dip below 0
    return out / out.sum()


EXAM = examination_probability(np.arange(TOP_K))


def ab_outcomes(bank: Bank, model: str, requests: int) -> np.ndarray:
    """P(a user of this arm clicks t times over ``requests`` requests), t = 0..requests * K."""
    shown = np.take_along_axis(bank.click, bank.top[model], axis=2) * EXAM  # [P, B, K]
    per_request = poisson_binomial(shown).mean(axis=1)  # [P, K + 1]: a random set from the user's bank
    per_user = np.stack([power_of(row, requests) for row in per_request])
    return per_user.mean(axis=0)


def interleaved_lists(bank: Bank, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """For every coin sequence: [P, B, COINS, K] candidate indexes and teams of the team-draft merge."""
    p, n_sets, _ = bank.candidates.shape
    items = np.empty((p, n_sets, COINS, TOP_K), np.int64)
    teams = np.empty((p, n_sets, COINS, TOP_K), np.int8)
    coins = [[bool(pattern >> r & 1) for r in range(ROUNDS)] for pattern in range(COINS)]
    for i in tqdm(range(p), desc=f"merging {a} | {b}", unit="user", mininterval=5):
        for s in range(n_sets):
            list_a, list_b = bank.top[a][i, s].tolist(), bank.top[b][i, s].tolist()
            for c, first in enumerate(coins):
                merged, team = team_draft(list_a, list_b, TOP_K, first)
                items[i, s, c], teams[i, s, c] = merged, team
    return items, teams


def interleaving_outcomes(bank: Bank, items: np.ndarray, teams: np.ndarray, requests: int) -> np.ndarray:
    """P(a user's clicks credited to A = i and to B = j) over ``requests`` requests: [R K + 1, R K + 1]."""
    p = np.take_along_axis(bank.click[:, :, None, :], items, axis=3) * EXAM  # [P, B, COINS, K]
    pmf_a = poisson_binomial(p, teams == 0)  # [P, B, COINS, K + 1]
    pmf_b = poisson_binomial(p, teams == 1)
    joint = np.einsum("pnci,pncj->pij", pmf_a, pmf_b) / (pmf_a.shape[1] * pmf_a.shape[2])  # per request
    per_user = np.stack([power_of(row, requests) for row in joint])
    return per_user.mean(axis=0)


@dataclass(frozen=True)
class Truth:
    ctr_a: float
    ctr_b: float
    lift: float  # ctr_b / ctr_a - 1
    preference: float  # delta of interleaving
    credit_diff: float  # mean clicks credited to B minus A per user


def truth(ab_a: np.ndarray, ab_b: np.ndarray, joint: np.ndarray, requests: int) -> Truth:
    t = np.arange(len(ab_a))
    ctr_a, ctr_b = float(ab_a @ t) / (requests * TOP_K), float(ab_b @ t) / (requests * TOP_K)
    i, j = np.indices(joint.shape)
    prefer_b, prefer_a = joint[j > i].sum(), joint[i > j].sum()
    clicked = 1.0 - joint[0, 0]
    return Truth(
        ctr_a,
        ctr_b,
        ctr_b / ctr_a - 1,
        float((prefer_b - prefer_a) / clicked),
        float((joint * (j - i)).sum()),
    )


# ---- experiments ----------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """Per run: two-sided p-value and the sign of the estimate."""

    p: np.ndarray
    sign: np.ndarray

    def power(self, direction: int) -> float:
        """Share of runs significant in ``direction`` (any direction when 0)."""
        hit = self.p < ALPHA
        return float(np.mean(hit if direction == 0 else hit & (self.sign == direction)))


def ab_runs(pmf_a: np.ndarray, pmf_b: np.ndarray, users: int, runs: int, requests: int, rng) -> Verdicts:
    """``runs`` A/B experiments of ``users`` users split in halves: the CTR test of the demo report."""
    t = np.arange(len(pmf_a), dtype=float)
    impressions = requests * TOP_K
    p_values, signs = np.empty(runs), np.empty(runs)
    halves = (users // 2, users - users // 2)
    counts = [
        rng.multinomial(n, pmf / pmf.sum(), size=runs) for n, pmf in zip(halves, (pmf_a, pmf_b), strict=True)
    ]
    for r in range(runs):
        stats = []
        for n, c in zip(halves, counts, strict=True):
            total, squares = float(c[r] @ t), float(c[r] @ (t * t))
            stats.append(
                Ratio(
                    n,
                    SampleMean(n, total, squares),
                    SampleMean(n, float(impressions * n), float(impressions**2 * n)),
                    impressions * total,
                )
            )
        result = frequentist_test(stats[0], stats[1], AB_TEST).compute_result()
        p_values[r] = 1.0 if result.p_value is None else result.p_value
        signs[r] = np.sign(result.estimate or 0.0)
    return Verdicts(p_values, signs)


def counts_from_cells(cells: np.ndarray, shape: tuple[int, int]) -> list[PreferenceCounts]:
    """PreferenceCounts of each run from multinomial counts over the (credit A, credit B) grid."""
    i, j = (x.ravel() for x in np.indices(shape))
    d = (j - i).astype(float)
    n = cells.sum(axis=1)
    wins_b, wins_a = cells[:, j > i].sum(axis=1), cells[:, i > j].sum(axis=1)
    ties = cells[:, (i == j) & (i > 0)].sum(axis=1)
    return [
        PreferenceCounts(
            int(n[r]),
            int(wins_a[r]),
            int(wins_b[r]),
            int(ties[r]),
            float(cells[r] @ d),
            float(cells[r] @ (d * d)),
        )
        for r in range(len(cells))
    ]


def verdicts(rows: list[PreferenceCounts]) -> dict[str, Verdicts]:
    out = {}
    for name, test in (("sign", sign_test), ("credit", credit_test)):
        results = [test(c, ALPHA) for c in rows]
        out[name] = Verdicts(
            np.array([1.0 if r.p_value is None else r.p_value for r in results]),
            np.array([np.sign(r.estimate or 0.0) for r in results]),
        )
    return out


def interleaving_runs(joint: np.ndarray, users: int, runs: int, rng) -> dict[str, Verdicts]:
    cells = rng.multinomial(users, (joint / joint.sum()).ravel(), size=runs)
    return verdicts(counts_from_cells(cells, joint.shape))


def users_for_power(
    run: Callable[[int], float], start: int, target: float = 0.8, cap: int = 10_000_000
) -> tuple[int | None, list[tuple[int, float]]]:
    """Smallest size (log-interpolated) whose power reaches ``target``; every (size, power) evaluated."""
    table: dict[int, float] = {}

    def at(n: int) -> float:
        if n not in table:
            table[n] = run(n)
        return table[n]

    low, high = start, start
    while at(high) < target:
        low, high = high, high * 2
        if high > cap:
            return None, sorted(table.items())
    if high == start:
        return start, sorted(table.items())
    for _ in range(3):
        middle = int(round(math.sqrt(low * high)))
        if middle in (low, high):
            break
        if at(middle) < target:
            low = middle
        else:
            high = middle
    p_low, p_high = at(low), at(high)
    if p_high == p_low:
        return high, sorted(table.items())
    fraction = (target - p_low) / (p_high - p_low)
    return int(round(math.exp(math.log(low) + fraction * (math.log(high) - math.log(low))))), sorted(
        table.items()
    )


# ---- direct simulation (the cross-check) ----------------------------------------------------------------


def direct_interleaving(
    bank: Bank, a: str, b: str, users: int, runs: int, requests: int, rng: np.random.Generator, tag: str
) -> dict[str, Verdicts]:
    """Per user and request: ``interleave`` with a fresh request id, Bernoulli clicks, reference credit."""
    rows = []
    for run in tqdm(range(runs), desc=f"direct interleaving {tag}", unit="run", mininterval=5):
        people = rng.integers(0, len(bank.users), users)
        sets = rng.integers(0, bank.candidates.shape[1], (users, requests))
        exposures, clicks = [], []
        for u, (person, chosen) in enumerate(zip(people, sets, strict=True)):
            for r, s in enumerate(chosen):
                request_id = f"{tag}-{run}-{u}-{r}"
                ranking_a, ranking_b = bank.top[a][person, s].tolist(), bank.top[b][person, s].tolist()
                merged, team = interleave(ranking_a, ranking_b, TOP_K, str(u), request_id)
                item_ids = bank.candidates[person, s, merged]
                exposures.append(InterleavedExposure(str(u), request_id, item_ids.tolist(), team))
                hit = rng.random(TOP_K) < bank.click[person, s, merged] * EXAM
                clicks += [Click(str(u), request_id, int(i)) for i in item_ids[hit]]
        rows.append(preference_counts(user_preferences(exposures, clicks)))
    return verdicts(rows)


def direct_ab(
    bank: Bank, a: str, b: str, users: int, runs: int, requests: int, rng: np.random.Generator
) -> Verdicts:
    """Per user and request: the arm's top 10 of a random set from the user's bank, Bernoulli clicks."""
    p_values, signs = np.empty(runs), np.empty(runs)
    impressions = requests * TOP_K
    for run in range(runs):
        stats = []
        for model, n in ((a, users // 2), (b, users - users // 2)):
            people = rng.integers(0, len(bank.users), (n, 1))
            sets = rng.integers(0, bank.candidates.shape[1], (n, requests))
            shown = bank.top[model][people, sets]  # [n, R, K]
            p = np.take_along_axis(bank.click[people, sets], shown, axis=2) * EXAM
            per_user = (rng.random(p.shape) < p).sum(axis=(1, 2)).astype(float)
            stats.append(Ratio.from_values(per_user, np.full(n, float(impressions))))
        result = frequentist_test(stats[0], stats[1], AB_TEST).compute_result()
        p_values[run], signs[run] = result.p_value, np.sign(result.estimate)
    return Verdicts(p_values, signs)


# ---- the studies ----------------------------------------------------------------------------------------


@dataclass
class PairModel:
    """Both designs' per-user outcome distributions for arm A -> arm B, and the true effects."""

    a: str
    b: str
    requests: int
    pmf_a: np.ndarray
    pmf_b: np.ndarray
    joint: np.ndarray
    truth: Truth

    @classmethod
    def build(cls, bank: Bank, a: str, b: str, requests: int) -> PairModel:
        pmf_a, pmf_b = ab_outcomes(bank, a, requests), ab_outcomes(bank, b, requests)
        joint = interleaving_outcomes(bank, *interleaved_lists(bank, a, b), requests)
        return cls(a, b, requests, pmf_a, pmf_b, joint, truth(pmf_a, pmf_b, joint, requests))

    @property
    def directions(self) -> dict[str, int]:
        """The true direction of each design's own estimand (they could differ): power counts those verdicts."""
        t = self.truth
        return {
            "ab": int(np.sign(t.lift)),
            "sign": int(np.sign(t.preference)),
            "credit": int(np.sign(t.credit_diff)),
        }

    def ab(self, users: int, runs: int, rng: np.random.Generator) -> Verdicts:
        return ab_runs(self.pmf_a, self.pmf_b, users, runs, self.requests, rng)

    def interleaving(self, users: int, runs: int, rng: np.random.Generator) -> dict[str, Verdicts]:
        return interleaving_runs(self.joint, users, runs, rng)


def _rate(verdicts: Verdicts, runs: int) -> dict:
    rate = verdicts.power(0)
    return {"rate": rate, "ci": binomial_ci(rate * runs, runs)}


def aa_study(model: PairModel, bank: Bank, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """False-positive rates of both designs when both arms are the same ranker."""
    entry: dict = {"aa": {}, "aa_runs": args.aa_runs}
    for size in (200, 2000):
        il, ab = model.interleaving(size, args.aa_runs, rng), model.ab(size, args.aa_runs, rng)
        entry["aa"][size] = {
            "interleaving sign": _rate(il["sign"], args.aa_runs),
            "interleaving credit": _rate(il["credit"], args.aa_runs),
            "A/B CTR": _rate(ab, args.aa_runs),
        }
    if not args.no_check:
        direct = direct_interleaving(bank, model.a, model.b, 500, args.check_runs, model.requests, rng, "aa")
        entry["aa_direct_runs"] = args.check_runs
        entry["aa_direct_500_users"] = {name: _rate(v, args.check_runs) for name, v in direct.items()}
    return entry


def sensitivity_study(
    model: PairModel, bank: Bank, args: argparse.Namespace, rng: np.random.Generator
) -> dict:
    """Users each design needs for 80% power, agreement of verdicts, and the direct-simulation cross-check."""
    runs, way = args.experiments, model.directions
    ab_n, ab_table = users_for_power(lambda n: model.ab(n, runs, rng).power(way["ab"]), 100)
    il = {
        test: users_for_power(lambda n, t=test: model.interleaving(n, runs, rng)[t].power(way[t]), 20)
        for test in ("sign", "credit")
    }
    size = ab_n or ab_table[-1][0]  # both designs on as many users as the A/B test needs
    ab_verdicts, il_verdicts = model.ab(size, runs, rng), model.interleaving(size, runs, rng)["sign"]
    both = (ab_verdicts.p < ALPHA) & (il_verdicts.p < ALPHA)
    entry: dict = {
        "users_for_80_power": {
            "A/B CTR": ab_n,
            "interleaving sign": il["sign"][0],
            "interleaving credit": il["credit"][0],
        },
        "power_tables": {"A/B CTR": ab_table, **{f"interleaving {t}": il[t][1] for t in il}},
        "agreement": {
            "users": size,
            "runs": runs,
            "both_significant": int(both.sum()),
            "same_direction": int((both & (ab_verdicts.sign == il_verdicts.sign)).sum()),
            "interleaving_wrong_direction": int(
                ((il_verdicts.p < ALPHA) & (il_verdicts.sign == -way["sign"])).sum()
            ),
            "ab_wrong_direction": int(((ab_verdicts.p < ALPHA) & (ab_verdicts.sign == -way["ab"])).sum()),
        },
    }
    if not args.no_check:
        # Direct simulation is slow (Python per request): compare at the 80%-power size or at most 2,000 /
        # 20,000 users, where both methods must still agree.
        check_runs = min(args.check_runs, 200)
        n_il, n_ab = min(il["sign"][0] or 2000, 2000), min(ab_n or 20_000, 20_000)
        direct = direct_interleaving(bank, model.a, model.b, n_il, check_runs, model.requests, rng, model.b)
        entry["check"] = {
            "runs": check_runs,
            "interleaving users": n_il,
            "interleaving sign power (direct, exact)": [
                direct["sign"].power(way["sign"]),
                model.interleaving(n_il, runs, rng)["sign"].power(way["sign"]),
            ],
            "A/B users": n_ab,
            "A/B power (direct, exact)": [
                direct_ab(bank, model.a, model.b, n_ab, check_runs, model.requests, rng).power(way["ab"]),
                model.ab(n_ab, runs, rng).power(way["ab"]),
            ],
        }
    return entry


# ---- the report -----------------------------------------------------------------------------------------


def binomial_ci(k: float, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(int(round(k)), n, alpha=0.05, method="wilson")
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=("synthetic", "ego"), default="synthetic")
    parser.add_argument("--data", type=Path, help="folder holding ego-facebook/ (for --world ego)")
    parser.add_argument(
        "--users", type=int, default=1500,
        help=f"population (the demo's simulated users; synthetic world: at least {CANDIDATES}, its items)",
    )  # fmt: skip
    parser.add_argument("--bank", type=int, default=16, help="candidate sets per population user")
    parser.add_argument("--requests", type=int, default=3, help="requests per simulated user (the demo's 3)")
    parser.add_argument(
        "--fewer-rows",
        type=float,
        nargs="+",
        default=[0.25, 0.5],
        help="shares of the training rows of the DML rankers compared with the DML ranker on all rows",
    )
    parser.add_argument(
        "--experiments", type=int, default=1000, help="simulated experiments per size (>= 200)"
    )
    parser.add_argument("--aa-runs", type=int, default=10_000, help="simulated A/A experiments per size")
    parser.add_argument(
        "--check-runs", type=int, default=1000,
        help="direct-simulation runs of the A/A cross-check (the sensitivity cross-checks run at most 200)",
    )  # fmt: skip
    parser.add_argument("--no-check", action="store_true", help="skip the direct-simulation cross-checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".data" / "bench_interleaving")
    parser.add_argument(
        "--out", type=Path, help="results prefix (default benchmarks/results/interleaving_<world>)"
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only re-render the markdown of a results JSON"
    )
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0
    if args.experiments < 200:
        parser.error("--experiments must be >= 200")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started, load_before = time.perf_counter(), os.getloadavg()
    out = args.out or ROOT / "benchmarks" / "results" / f"interleaving_{args.world}"
    if args.world == "ego" and args.data is None:
        parser.error("--world ego needs --data")
    if args.world == "synthetic" and args.users < CANDIDATES:
        parser.error(f"--users: the synthetic world's items are its {args.users} users, fewer than the "
                     f"{CANDIDATES} candidates of a set; give at least {CANDIDATES}")  # fmt: skip
    try:
        world = make_world(args.data if args.world == "ego" else None, args.users, args.seed)
    except DataError as exc:
        parser.error(f"--data: {exc}")
    repository = args.workdir / f"{args.world}-{args.users}users-seed{args.seed}" / "repository"
    offline = train_rankers(world, repository, args.fewer_rows, args.seed)
    names = list(ranker_names(args.fewer_rows))
    demo, strong = names[0], names[1]
    pairs = {
        "demo": (demo, strong),
        **{f"fewer rows ({n})": (strong, n) for n in names[2:]},
        "aa": (strong, strong),
    }

    rng = np.random.default_rng(args.seed)
    users = world.simulated_users(args.users, args.seed)
    candidates = candidate_sets(world, users, args.bank, rng)
    click = np.stack(
        [
            world.click_probability(int(u), c.ravel()).reshape(c.shape)
            for u, c in zip(users, candidates, strict=True)
        ]
    )
    bank = Bank(users, candidates, click)
    for name in names:
        bank.top[name] = score_top(world, repository, name, bank)

    report: dict = {
        "command": " ".join(
            [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} nice -n {os.nice(0)} python"]
            + ["benchmarks/bench_interleaving.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "world": args.world,
        "population": len(users),
        "bank": args.bank,
        "requests_per_user": args.requests,
        "experiments_per_size": args.experiments,
        "offline_metrics": offline,
        "pairs": {},
    }
    for pair, (a, b) in pairs.items():
        logger.info("pair %s: %s -> %s", pair, a, b)
        model = PairModel.build(bank, a, b, args.requests)
        entry: dict = {"arms": [a, b], "truth": asdict(model.truth)}
        entry.update(
            aa_study(model, bank, args, rng) if pair == "aa" else sensitivity_study(model, bank, args, rng)
        )
        report["pairs"][pair] = entry
        logger.info("%s: %s", pair, json.dumps(entry, default=str)[:2000])
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _users(n: int | None) -> str:
    return "> 10,000,000" if n is None else f"{n:,}"


def markdown(report: dict) -> str:
    lines = [
        f"# Interleaving vs A/B sensitivity: {report['world']} world",
        "",
        f"Command: `{report['command']}`; wall {report['wall_seconds']:.0f} s; load average "
        f"{report['load_average']['before'][0]:.1f} before, {report['load_average']['after'][0]:.1f} after.",
        f"Population {report['population']} users x {report['bank']} candidate sets; {report['requests_per_user']} "
        f"requests per simulated user, top {TOP_K} shown; {report['experiments_per_size']} simulated experiments "
        "per size; power = significant at alpha 0.05 (two-sided) in the true direction.",
        "",
        "| pair | arm A -> arm B | true CTR A | true CTR B | true lift | true delta | A/B users (CTR) | "
        "interleaving users (sign test) | (credit t-test) | A/B users / interleaving users (sign, credit) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, entry in report["pairs"].items():
        t = entry["truth"]
        need = entry.get("users_for_80_power")
        row = (
            f"| {pair} | {entry['arms'][0]} -> {entry['arms'][1]} | {t['ctr_a']:.4f} | {t['ctr_b']:.4f} | "
            f"{t['lift']:+.2%} | {t['preference']:+.4f} | "
        )
        if need:
            ab, sign, credit = need["A/B CTR"], need["interleaving sign"], need["interleaving credit"]
            ratio = ", ".join(f"{ab / n:.1f}x" if ab and n else "-" for n in (sign, credit))
            row += f"{_users(ab)} | {_users(sign)} | {_users(credit)} | {ratio} |"
        else:
            row += "- | - | - | - |"
        lines.append(row)
    aa = report["pairs"].get("aa", {})
    if "aa" in aa:
        lines += ["", "A/A (both arms the same DML ranker): false-positive rate at alpha 0.05 [95% CI]", ""]
        lines += [
            "| users | runs | interleaving sign | interleaving credit | A/B CTR |",
            "|---:|---:|---:|---:|---:|",
        ]
        for size, rates in aa["aa"].items():
            cells = " | ".join(
                f"{v['rate']:.2%} [{v['ci'][0]:.2%}, {v['ci'][1]:.2%}]" for v in rates.values()
            )
            lines.append(f"| {size} | {aa['aa_runs']} | {cells} |")
        if "aa_direct_500_users" in aa:
            direct = aa["aa_direct_500_users"]
            lines.append(
                f"| 500, direct simulation (real merge, request-id coins, reference credit) | {aa['aa_direct_runs']} | "
                + " | ".join(f"{v['rate']:.2%} [{v['ci'][0]:.2%}, {v['ci'][1]:.2%}]" for v in direct.values())
                + " | - |"
            )
    lines += ["", "Agreement of verdicts (both designs on as many users as the A/B test needs):", ""]
    lines += [
        "| pair | users | runs | both significant | same direction | interleaving wrong-direction | A/B wrong-direction |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, entry in report["pairs"].items():
        if "agreement" in entry:
            g = entry["agreement"]
            lines.append(
                f"| {pair} | {g['users']:,} | {g['runs']} | {g['both_significant']} | {g['same_direction']} | "
                f"{g['interleaving_wrong_direction']} | {g['ab_wrong_direction']} |"
            )
    lines += ["", "Power evaluated at each size (users: power):", ""]
    for pair, entry in report["pairs"].items():
        for design, table in entry.get("power_tables", {}).items():
            cells = ", ".join(f"{n:,}: {p:.2f}" for n, p in table)
            lines.append(f"- {pair}, {design}: {cells}")
    checks = [(pair, e["check"]) for pair, e in report["pairs"].items() if "check" in e]
    if checks:
        lines += [
            "",
            "Cross-check, direct per-user simulation vs the exact-distribution simulation (power):",
            "",
        ]
        for pair, c in checks:
            lines.append(
                f"- {pair}: interleaving sign test at {c['interleaving users']:,} users: direct "
                f"{c['interleaving sign power (direct, exact)'][0]:.2f} ({c['runs']} runs) vs exact "
                f"{c['interleaving sign power (direct, exact)'][1]:.2f}; A/B at {c['A/B users']:,} users: direct "
                f"{c['A/B power (direct, exact)'][0]:.2f} ({c['runs']} runs) vs exact "
                f"{c['A/B power (direct, exact)'][1]:.2f}"
            )
    lines += ["", "Offline test metrics of the rankers:", ""]
    for name, metrics in report["offline_metrics"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
