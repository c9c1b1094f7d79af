"""Is a pending Slurm job stuck for good? A pure verdict over data/slurm_pending.toml.

The Slurm adapter reads the job (its reason, partition, nodes and time limit) and, for a reason
that may be hopeless, what its partition offers; `judge` decides and words the error: what the
job asks for, what the cluster has, and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, cast, get_args

from cudabox.errors import DataError
from cudabox.sourced import check_cited, parse_table, read_data, rows_of, sources_of

Verdict = Literal["hopeless", "wait"]
# "always": the reason alone settles it; "unavailable_nodes": only when Slurm names nodes that
# are DOWN/DRAINED/not responding; "exceeds_partition": only when the request is larger than the
# partition is at all (its nodes, MaxNodes, MaxTime); "-": a wait row.
When = Literal["always", "unavailable_nodes", "exceeds_partition", "-"]
Limit = Literal[
    "nodes", "time", "nodes_down", "constraints", "account", "qos", "resources", "dependency", "-"
]

# sinfo's node states (long form, %T; sinfo(1), NODE STATE CODES) that cannot take a job until an
# admin acts. A suffix ("*" not responding, "~" powered off, ...) is stripped first.
_UNUSABLE = ("down", "drain", "drained", "draining", "fail", "failing", "future", "inval")
_FIX = "reinstall cudabox; if you edited data/slurm_pending.toml, correct the row it names"
_KEYS: dict[str, type] = {
    "reason": str,
    "verdict": str,
    "when": str,
    "limit": str,
    "meaning": str,
    "source": str,
}


@dataclass(frozen=True)
class PendingRule:
    """One row of slurm_pending.toml."""

    reason: str
    verdict: Verdict
    when: When
    limit: Limit
    meaning: str
    source: str


@dataclass(frozen=True)
class PendingRules:
    by_reason: Mapping[str, PendingRule]

    def get(self, reason: str | None) -> PendingRule | None:
        """The row for a reason as scontrol prints it (detail after a comma ignored)."""
        return self.by_reason.get(split_reason(reason)[0]) if reason else None

    def may_be_hopeless(self, reason: str | None) -> bool:
        """Worth reading the partition for: a hopeless row (perhaps on condition) matches."""
        rule = self.get(reason)
        return rule is not None and rule.verdict == "hopeless"


@dataclass(frozen=True)
class JobRequest:
    """What a pending job asks for, as `scontrol show job` reports it."""

    job_id: str
    partition: str | None
    nodes: int | None  # the minimum of NumNodes ("3-3" -> 3)
    time_limit: str | None  # Slurm's text ("00:05:00", "UNLIMITED"); None: not known
    time_limit_s: int | None  # None: unlimited or not known


@dataclass(frozen=True)
class PartitionOffer:
    """What a partition has, from `scontrol show partition` and sinfo."""

    name: str
    total_nodes: int
    max_nodes: int | None  # None: UNLIMITED
    max_time: str | None  # Slurm's text; None: UNLIMITED
    max_time_s: int | None  # None: UNLIMITED
    state: str | None = None  # UP, DOWN, DRAIN, INACTIVE
    node_states: tuple[tuple[str, int], ...] = ()  # sinfo: ("idle", 2), ("down*", 1)

    @property
    def node_cap(self) -> int:
        """The most nodes one job may get here."""
        return self.total_nodes if self.max_nodes is None else min(self.total_nodes, self.max_nodes)

    @property
    def usable_nodes(self) -> int | None:
        """Nodes that can take a job now or once others end; None when sinfo was not read."""
        if not self.node_states:
            return None
        return sum(count for state, count in self.node_states if not _unusable(state))

    def describe(self) -> str:
        size = _nodes(self.total_nodes)
        if self.node_states:
            size += " (" + ", ".join(f"{count} {state}" for state, count in self.node_states) + ")"
        limits = (
            f"MaxNodes {self.max_nodes if self.max_nodes is not None else 'UNLIMITED'}, "
            f"MaxTime {self.max_time or 'UNLIMITED'}"
        )
        state = f", state {self.state}" if self.state and self.state != "UP" else ""
        return f"partition {self.name} has {size}; {limits}{state}"


@dataclass(frozen=True)
class Stuck:
    """A pending job that will not start: why, in words, and what to change."""

    reason: str  # as Slurm printed it
    rule: PendingRule
    message: str
    fix: str


def split_reason(reason: str) -> tuple[str, str]:
    """scontrol's "ReqNodeNotAvail,_UnavailableNodes:n[1-2]" as (code, detail), with the
    underscores scontrol puts for spaces turned back into spaces."""
    code, _, detail = reason.partition(",")
    return code.strip(), detail.replace("_", " ").strip()


def judge(
    reason: str | None,
    request: JobRequest,
    offer: PartitionOffer | None,
    rules: PendingRules | None = None,
) -> Stuck | None:
    """The job can never start as it is (and why), or None: keep waiting."""
    if not reason:
        return None
    rules = rules if rules is not None else load_pending_rules()
    rule = rules.get(reason)
    if rule is None or rule.verdict != "hopeless":
        return None  # unknown reasons wait: a newer Slurm's reason may well clear
    if request.partition and "," in request.partition:
        return None  # submitted to several partitions: the reason is one's, another may run it
    limit: Limit = rule.limit
    if rule.when == "unavailable_nodes" and not _names_unavailable_nodes(reason):
        return None
    if rule.when == "exceeds_partition":
        exceeded = _exceeds(request, offer)
        if exceeded is None:
            return None
        limit = exceeded
    return Stuck(
        reason=reason,
        rule=rule,
        message=_message(reason, rule, request, offer),
        fix=_fix(limit, rule, request, offer),
    )


# ---- wording ------------------------------------------------------------------------------------


def _message(
    reason: str, rule: PendingRule, request: JobRequest, offer: PartitionOffer | None
) -> str:
    shown = reason.replace(",_", ", ").replace("_", " ")
    text = f"Slurm job {request.job_id} can never start: it is PENDING ({shown}): {rule.meaning}"
    asks = []
    if request.nodes is not None:
        asks.append(_nodes(request.nodes))
    if request.time_limit and request.time_limit_s is not None:  # not UNLIMITED
        asks.append(f"time limit {request.time_limit}")
    if asks:
        where = f" in partition {request.partition}" if request.partition else ""
        text += f". The job asks for {' and '.join(asks)}{where}"
    if offer is not None:
        text += f"; {offer.describe()}"
    return text


def _nodes(count: int) -> str:
    return f"{count} node{'s' if count != 1 else ''}"


def _fix(limit: Limit, rule: PendingRule, request: JobRequest, offer: PartitionOffer | None) -> str:
    anyway = "; --wait-pending keeps waiting (if an admin will change the limit)"
    partitions = (
        "choose another partition (--partition NAME; `sinfo -s` lists them and their sizes)"
    )
    by_partition = rule.reason.startswith("Partition")  # the partition's limit, not a QOS's
    if limit == "nodes" and offer is not None and by_partition:
        cap, usable, asked = offer.node_cap, offer.usable_nodes, request.nodes
        if cap < 1:
            return f"{partitions}: {offer.name} has no node a job can get{anyway}"
        if asked is not None and asked > cap:
            return f"ask for at most {_nodes(cap)} (--nodes {cap}), or {partitions}{anyway}"
        if asked is not None and usable is not None and usable < asked:
            return (
                f"only {_nodes(usable)} of {offer.name} can take a job now (the others are down "
                f"or drained): ask for at most {usable} (--nodes {usable}), {partitions}, or ask "
                f"the cluster's admins to return the nodes (`sinfo -R` says why){anyway}"
            )
    if limit == "nodes":
        return (
            "ask for fewer nodes (--nodes), or "
            + partitions
            + "; `sacctmgr show assoc user=$USER` and `sacctmgr show qos` list per-job limits"
            + anyway
        )
    if limit == "time" and offer is not None and offer.max_time and by_partition:
        return (
            f"ask for at most {offer.max_time} (--time {offer.max_time}), or choose a partition "
            "with a longer MaxTime (--partition NAME; `sinfo -s` lists them)" + anyway
        )
    if limit == "time":
        return (
            "ask for a shorter time limit (--time), or fewer nodes or GPUs where the limit is on "
            "their product; `sacctmgr show assoc user=$USER` and `sacctmgr show qos` list the "
            "limits" + anyway
        )
    if limit == "nodes_down":
        return (
            f"{partitions}, or ask the cluster's admins to return the nodes to service "
            "(`sinfo -R` shows why they are down)" + anyway
        )
    if limit == "constraints":
        return (
            "change or drop the job's constraint (sbatch --constraint / SBATCH_CONSTRAINT); "
            "`sinfo -o '%P %N %f'` lists each node's features" + anyway
        )
    if limit == "account":
        return (
            "use an account that may use this partition (SBATCH_ACCOUNT=NAME; "
            "`sacctmgr show assoc user=$USER` lists yours), or " + partitions + anyway
        )
    if limit == "qos":
        return (
            "use a QOS your account may use here (SBATCH_QOS=NAME; "
            "`sacctmgr show assoc user=$USER format=account,partition,qos` lists them)" + anyway
        )
    if limit == "dependency":
        return "submit the job it depends on again, or drop the dependency" + anyway
    return (
        "ask for fewer GPUs, CPUs or less memory per job or per node (--gpus-per-node, --nodes), "
        "within what `sacctmgr show qos` and `sacctmgr show assoc user=$USER` list" + anyway
    )


# ---- conditions ---------------------------------------------------------------------------------


def _names_unavailable_nodes(reason: str) -> bool:
    _, detail = split_reason(reason)
    marker = "UnavailableNodes:"
    at = detail.find(marker)
    return at >= 0 and bool(detail[at + len(marker) :].strip())


def _exceeds(request: JobRequest, offer: PartitionOffer | None) -> Limit | None:
    """Which of the partition's limits the request exceeds for good, if any."""
    if offer is None:
        return None  # not confirmed: keep waiting
    if request.nodes is not None and request.nodes > offer.node_cap:
        return "nodes"
    if (
        request.time_limit_s is not None
        and offer.max_time_s is not None
        and request.time_limit_s > offer.max_time_s
    ):
        return "time"
    return None


def _unusable(state: str) -> bool:
    base = state.rstrip("*~#!%$@^-").lower()
    return any(base.startswith(word) for word in _UNUSABLE)


# ---- the data file ------------------------------------------------------------------------------


def parse_pending_rules(
    data: Mapping[str, Any] | str, where: str = "slurm_pending.toml"
) -> PendingRules:
    """The rows of slurm_pending.toml (its text, or the parsed table); any flaw is a DataError."""
    data = parse_table(data, where, _FIX, {"schema", "sources", "reason"})
    if data.get("schema") != 1:
        raise DataError(f"{where}: schema must be 1, got {data.get('schema')!r}", _FIX)
    sources = sources_of(data, where, _FIX)
    rules: dict[str, PendingRule] = {}
    for n, row in enumerate(rows_of(data, "reason", where, _FIX), start=1):
        at = f"{where} [[reason]] row {n}"
        for key in row:
            if key not in _KEYS:
                raise DataError(f"{at}: unknown key {key!r}", _FIX)
        for key, kind in _KEYS.items():
            if not isinstance(row.get(key), kind):
                raise DataError(f"{at}: {key!r} must be a string, got {row.get(key)!r}", _FIX)
        check_cited(row, sources, at, _FIX)
        _check_choice(row, "verdict", Verdict, at)
        _check_choice(row, "when", When, at)
        _check_choice(row, "limit", Limit, at)
        hopeless = row["verdict"] == "hopeless"
        if hopeless == (row["when"] == "-") or hopeless == (row["limit"] == "-"):
            raise DataError(
                f"{at}: a hopeless row needs a when and a limit, a wait row has '-' for both", _FIX
            )
        if row["reason"] in rules:
            raise DataError(f"{at}: {row['reason']} has a row already", _FIX)
        rules[row["reason"]] = PendingRule(
            reason=row["reason"],
            verdict=cast(Verdict, row["verdict"]),
            when=cast(When, row["when"]),
            limit=cast(Limit, row["limit"]),
            meaning=row["meaning"],
            source=row["source"],
        )
    return PendingRules(rules)


def _check_choice(row: Mapping[str, Any], key: str, choices: Any, at: str) -> None:
    allowed = get_args(choices)
    if row[key] not in allowed:
        raise DataError(f"{at}: {key} must be one of {', '.join(allowed)}, got {row[key]!r}", _FIX)


@cache
def load_pending_rules() -> PendingRules:
    text, where = read_data("slurm_pending.toml", _FIX)
    return parse_pending_rules(text, where)
