"""What `rlfleet up` does, as named phases: prepare the model, write the cluster config, start, evaluate, train, report."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from generator.config import VLLM_LORA_RANKS
from launcher.algorithms import apply_algorithm, prepare_reward_model, task_reward
from launcher.cluster import ClusterError, LocalCluster, Service
from launcher.environment import add_env_tables, tool_warm_start, uses_reward_service
from launcher.progress import ProgressView
from launcher.up import BUILTIN_MODEL, UpConfig
from rlfleet.config import to_toml
from tasks import REWARD_SCRIPT

log = logging.getLogger("launcher.up")


@dataclass
class Ports:
    generators: list[int]
    reward: int
    reference: int
    learner: int
    environment: int

    @classmethod
    def from_base(cls, base: int, generators: int) -> Ports:
        return cls([base + i for i in range(generators)], base + 20, base + 30, base + 40, base + 50)

    @staticmethod
    def metrics(grpc_port: int) -> int:
        """Each service's /metrics port: its gRPC port + 1000."""
        return grpc_port + 1000


@dataclass
class Summary:
    """The run's result, printed at the end and saved as RUN_DIR/summary.json."""

    run_dir: str
    steps: int
    policy_version: int
    reward_first_steps: float
    reward_last_steps: float
    heldout_before: float | None
    heldout_after: float | None
    wall_seconds: float
    warmstart_seconds: float
    heldout_tool_calls_before: float | None = None   # with --env: held-out trajectories that called a tool
    heldout_tool_calls_after: float | None = None
    heldout_sampled_before: float | None = None      # mean@k: --eval-samples per prompt at the training temperature
    heldout_sampled_after: float | None = None
    heldout_sampled_tool_calls_before: float | None = None
    heldout_sampled_tool_calls_after: float | None = None
    tool_calls_first_steps: float | None = None      # with --env: training trajectories that called a tool
    tool_calls_last_steps: float | None = None
    # with a critic: its explained variance, mean over the 5 steps up to each of steps 5, 15, 30, 60, ...
    explained_variance: dict[int, float] | None = None


def prepare_model(config: UpConfig, run_dir: Path) -> tuple[str, float]:
    """The model path to serve; for `builtin:tiny`, builds the tiny model and runs the warm-start phase."""
    if config.model != BUILTIN_MODEL:
        return config.model, 0.0
    from launcher.tiny_model import TinyModelSpec, build_tiny_model
    from launcher.warmstart import warm_start
    from learner.pipeline.dataset import builtin_rows

    base = build_tiny_model(run_dir / "models" / "tiny", TinyModelSpec(seed=config.seed))
    if config.warmstart_steps == 0 or not config.dataset.startswith("builtin:"):
        return str(base), 0.0
    if config.env is not None:
        return tool_warm_start(config, base, run_dir)
    train_rows, _ = builtin_rows(config.dataset.split(":", 1)[1], seed=1234 + config.seed)
    print(f"phase 1/3  supervised warm-start of the tiny model: {config.warmstart_steps} steps on "
          f"{config.dataset} (teaches the answer format; RL does the rest)", flush=True)
    result = warm_start(base, run_dir / "models" / "warm", train_rows, config.warmstart_steps, seed=config.seed)
    print(f"           done in {result.seconds:.0f}s, final loss {result.final_loss:.3f}", flush=True)
    return str(result.path), result.seconds


def vllm_rank(rank: int) -> int:
    """The generator's max_lora_rank for an adapter of `rank`: the smallest vLLM compiles kernels for that holds it.

    vLLM pads every adapter to max_lora_rank, and on the CPU its LoRA ops copy each token's slice of
    every loaded adapter at that rank: measured per 8 x 8 call of the tiny model, 0.27 CPU-s without
    an adapter, 0.44 at rank 1, 0.79 at rank 8, 1.2 at rank 16. A rank above the largest one is left
    for the generator's own check to name."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def learner_algo(config: UpConfig) -> dict:
    """The learner's algorithm: GRPO with the KL term and rejection sampling's NLL term (on a multi-turn
    trajectory, its model turns only: the NLL takes the loss mask, learner.algos.rejection_sampling.sft_mask)."""
    algo: dict = {"kl": {"coef": config.kl_coef, "estimator": "k3", "mode": "loss"}}
    if config.rejection_sampling > 0:
        # The best 2 of 8: more copies of a prompt's correct answer add weight to the easy prompts only.
        algo["rejection_sampling"] = {"coef": config.rejection_sampling, "top_fraction": 0.25,
                                      "min_reward": config.rejection_sampling_min_reward}
    return algo


def cluster_tables(config: UpConfig, model: str, run_dir: Path, ports: Ports, reward_model: str | None = None) -> dict:
    """One table per service; the same tables a compose deployment reads (compose/cluster*.toml)."""
    reward_script = str(config.reward_script or REWARD_SCRIPT)
    reference = config.reference_service and config.kl_coef > 0
    tables = {
        "generator": {"model": model, "dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.1,
                      "kv_cache_space_gib": 1, "keep_versions": config.max_staleness + 2,
                      "max_lora_rank": vllm_rank(config.lora_rank), "seed": config.seed, "max_model_len": 512},
        "reward": {"script": reward_script, "reward": list(config.reward), "workers": 1},
        "reference": {"model": model, "dtype": "float32"},
        "learner": {
            "model": model, "run_dir": str(run_dir), "max_steps": config.steps, "seed": config.seed,
            "reference": "service" if reference else "in_process",
            "lora": {"r": config.lora_rank, "alpha": config.lora_alpha},
            "deepspeed": {"zero_stage": 2, "dtype": "fp32", "lr": config.lr},
            "algo": learner_algo(config),
            "checkpoint": {"every_steps": max(config.steps // 4, 1)},
            "generators": [f"127.0.0.1:{p}" for p in ports.generators],
            "source": {
                "type": "pipeline", "dataset": config.dataset, "seed": config.seed, "eval_split_fraction": 0.1,
                "rewards": [{"address": f"127.0.0.1:{ports.reward}", "name": "reward"}],
                "reference": f"127.0.0.1:{ports.reference}" if reference else None,
                "group_size": config.group_size, "prompts_per_batch": config.prompts_per_batch,
                "max_tokens": config.max_tokens, "max_staleness": config.max_staleness,
            },
        },
    }
    apply_algorithm(tables, config, reward_model)
    if config.env is not None:
        add_env_tables(tables, config, f"127.0.0.1:{ports.environment}")
    return tables


def start_services(cluster: LocalCluster, config: UpConfig, cluster_toml: Path, ports: Ports, with_reference: bool
                   ) -> list[Service]:
    """Reward (or environment), reference and generators (the learner comes after the first evaluation)."""
    common = ["--config", str(cluster_toml)]
    services = []
    if uses_reward_service(config):
        threads, cpus = config.placement("reward")
        services.append(cluster.start(Service("reward", "reward-server", common, ports.reward,
                                              ports.metrics(ports.reward), threads=threads, cpus=cpus)))
    if config.env is not None:
        threads, cpus = config.placement("environment")
        services.append(cluster.start(Service("environment", "env-server", common, ports.environment,
                                              ports.metrics(ports.environment), threads=threads, cpus=cpus)))
    if with_reference:
        threads, cpus = config.placement("reference")
        services.append(cluster.start(Service("reference", "reference", common, ports.reference,
                                              ports.metrics(ports.reference), threads=threads, cpus=cpus)))
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    threads, cpus = config.placement("generator")
    for i, port in enumerate(ports.generators):
        services.append(cluster.start(Service(f"generator-{i}", "generator", common, port, ports.metrics(port),
                                              threads=threads, cpus=cpus, env=env)))
    return services


@dataclass(frozen=True)
class HeldOut:
    """The held-out prompts' task reward: greedy, and mean@k of k samples per prompt drawn as training draws them."""

    reward: float | None = None
    tool_calls: float | None = None          # with --env: greedy trajectories that called a tool
    sampled_reward: float | None = None      # None with --eval-samples 0
    sampled_tool_calls: float | None = None


def heldout_reward(config: UpConfig, tables: dict, label: str) -> HeldOut:
    """Held-out reward through the running generators and reward service, greedy and (with --eval-samples k)
    mean@k at the training temperature, and (with --env) the fraction of trajectories that called a tool."""
    if config.eval_rows == 0:
        return HeldOut()
    from learner.config import LearnerConfig
    from learner.pipeline.dataset import load_rows
    from learner.pipeline.evaluate import evaluate

    learner = LearnerConfig.model_validate(tables["learner"])
    pipeline = learner.source
    _, eval_rows = load_rows(pipeline.dataset, pipeline.prompt_column, pipeline.answer_column,
                             pipeline.eval_split_fraction, pipeline.seed)
    rows = eval_rows[: config.eval_rows]
    greedy = _report(asyncio.run(evaluate(rows, learner)), config, tables, label, "greedy")
    if config.eval_samples == 0:
        return HeldOut(*greedy)
    # the same seed before and after: the two draws differ only by the policy
    sampled = asyncio.run(evaluate(rows, learner, samples=config.eval_samples, seed=config.seed))
    return HeldOut(*greedy, *_report(sampled, config, tables, label, f"mean@{config.eval_samples}, sampled"))


def _report(result, config: UpConfig, tables: dict, label: str, how: str) -> tuple[float, float | None]:
    """Prints one evaluation; (task reward, tool-call rate or None)."""
    parts = ", ".join(f"{k} {v:.3f}" for k, v in result.components.items())
    mean = result.mean_reward
    if "model" in tables["reward"]:  # the policy trains on the reward model; the task's reward is what is measured
        mean = task_reward(result.components, config.reward)
        parts = f"reward model {result.mean_reward:.3f}; {parts}"
    print(f"           held-out reward {label} ({how}): {mean:.3f} ({parts}; {result.rows} prompts, "
          f"policy version {result.policy_version})", flush=True)
    if result.trajectories:
        print("           held-out trajectories: " + ", ".join(f"{k} {v:.3f}" for k, v in result.trajectories.items()),
              flush=True)
    return mean, result.trajectories.get("tool_call_rate")


def wait_for_version(address: str, version: int, timeout: float = 60.0) -> int:
    """Waits until a generator serves `version` (the learner's last push); returns what it serves."""
    from rlfleet.clients import GeneratorClient

    async def wait() -> int:
        deadline, served = time.monotonic() + timeout, -1
        async with GeneratorClient(address) as generator:
            while time.monotonic() < deadline:
                served = (await generator.info(timeout=5)).policy_version
                if served >= version:
                    break
                await asyncio.sleep(0.5)
        return served

    return asyncio.run(wait())


def train(cluster: LocalCluster, config: UpConfig, cluster_toml: Path, ports: Ports, run_dir: Path) -> Service:
    """Starts the learner and shows progress until it exits; raises ClusterError if it fails."""
    threads, cpus = config.placement("learner")
    learner = cluster.start(Service("learner", "learner", ["--config", str(cluster_toml)], ports.learner,
                                    ports.metrics(ports.learner), threads=threads, cpus=cpus))
    view = ProgressView(run_dir / "metrics.jsonl", config.steps, config.progress)
    while learner.alive():
        view.poll()
        time.sleep(0.5)
    view.poll()
    view.close()
    if learner.process.returncode != 0:
        raise ClusterError(f"learner exited with code {learner.process.returncode}; end of its log:\n"
                           f"{cluster.log_tail(learner)}")
    return learner


def summarise(run_dir: Path, before: float | None, after: float | None, wall: float, warm: float) -> Summary:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rewards = [r["reward_mean"] for r in records]
    k = max(1, min(5, len(rewards) // 4))
    summary = Summary(str(run_dir), len(records), int(records[-1]["policy_version"]) if records else 0,
                      sum(rewards[:k]) / k if rewards else float("nan"),
                      sum(rewards[-k:]) / k if rewards else float("nan"), before, after, wall, warm)
    summary.explained_variance = explained_variance_over_steps(records)
    tools = [r["trajectory/tool_call_rate"] for r in records if "trajectory/tool_call_rate" in r]
    if tools:
        summary.tool_calls_first_steps, summary.tool_calls_last_steps = sum(tools[:k]) / k, sum(tools[-k:]) / k
    return summary


def explained_variance_over_steps(records: list[dict]) -> dict[int, float] | None:
    """{step: mean explained variance of the critic over the 5 steps up to it} at steps 5, 15, 30 and every 30
    after, and the last step; None without a critic. A single step's value is noisy (64 samples)."""
    ev = {int(r["step"]): r["value_explained_variance"] for r in records
          if r.get("value_explained_variance") is not None and r["value_explained_variance"] == r["value_explained_variance"]}
    if not ev:
        return None
    last = max(ev)
    marks = sorted({s for s in [5, 15, *range(30, last + 1, 30), last] if s <= last})
    out = {}
    for mark in marks:
        window = [ev[s] for s in range(mark - 4, mark + 1) if s in ev]
        if window:
            out[mark] = round(sum(window) / len(window), 3)
    return out


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill`/`timeout` stop the cluster the same way Ctrl-C does


def run_cluster(config: UpConfig) -> int:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    start = time.perf_counter()
    run_dir = (config.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    model, warm_seconds = prepare_model(config, run_dir)
    reward_model, _ = prepare_reward_model(config, model, run_dir)
    ports = Ports.from_base(config.base_port, config.generators)
    tables = cluster_tables(config, model, run_dir, ports, reward_model)
    cluster_toml = run_dir / "cluster.toml"
    cluster_toml.write_text("# Resolved by `rlfleet up`; each service reads its own table.\n\n" + to_toml(tables))
    cluster = LocalCluster(run_dir)
    try:
        print(f"phase 2/3  starting services (logs in {run_dir / 'logs'})", flush=True)
        with_reference = tables["learner"]["reference"] == "service"
        services = start_services(cluster, config, cluster_toml, ports, with_reference)
        cluster.wait_healthy(services, config.health_timeout_seconds)
        before = heldout_reward(config, tables, "before")
        print(f"phase 3/3  training {config.steps} steps ({config.algo}): {config.generators} generator(s), "
              f"max_staleness {config.max_staleness}, group size {config.group_size}", flush=True)
        train(cluster, config, cluster_toml, ports, run_dir)
        trained = summarise(run_dir, None, None, 0, warm_seconds)
        served = wait_for_version(f"127.0.0.1:{ports.generators[0]}", trained.policy_version)
        after = heldout_reward(config, tables, f"after (version {served})")
    except KeyboardInterrupt:
        print("\ninterrupted: stopping services (the learner checkpoints first)", flush=True)
        cluster.stop_all()
        return 130
    except ClusterError as err:  # a service failed: its log says why, a traceback of this process would not
        print(f"rlfleet up: error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.stop_all()
    summary = summarise(run_dir, before.reward, after.reward, time.perf_counter() - start, warm_seconds)
    summary.heldout_tool_calls_before, summary.heldout_tool_calls_after = before.tool_calls, after.tool_calls
    summary.heldout_sampled_before, summary.heldout_sampled_after = before.sampled_reward, after.sampled_reward
    summary.heldout_sampled_tool_calls_before = before.sampled_tool_calls
    summary.heldout_sampled_tool_calls_after = after.sampled_tool_calls
    (run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=1) + "\n")
    if config.plot:
        from launcher.plot import plot_run

        plot_run(run_dir)
    print_summary(summary)
    return 0


def print_summary(s: Summary) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print("\n== rlfleet up: summary ==")
    print(f"steps trained           {s.steps} (policy version {s.policy_version})")
    print(f"train reward            {fmt(s.reward_first_steps)} (first steps) -> {fmt(s.reward_last_steps)} (last steps)")
    print(f"held-out reward         {fmt(s.heldout_before)} (before) -> {fmt(s.heldout_after)} (after; greedy)")
    if s.heldout_sampled_before is not None:
        print(f"held-out reward sampled {fmt(s.heldout_sampled_before)} (before) -> {fmt(s.heldout_sampled_after)} "
              "(after; mean over --eval-samples per prompt at the training temperature)")
    if s.tool_calls_first_steps is not None:
        print(f"train tool-call rate    {fmt(s.tool_calls_first_steps)} (first steps) -> "
              f"{fmt(s.tool_calls_last_steps)} (last steps; trajectories calling a tool)")
    if s.heldout_tool_calls_before is not None:
        print(f"held-out tool-call rate {fmt(s.heldout_tool_calls_before)} (before) -> "
              f"{fmt(s.heldout_tool_calls_after)} (after; greedy)")
    if s.heldout_sampled_tool_calls_before is not None:
        print(f"held-out tool-call rate {fmt(s.heldout_sampled_tool_calls_before)} (before) -> "
              f"{fmt(s.heldout_sampled_tool_calls_after)} (after; sampled)")
    if s.explained_variance:
        print("critic explained var.   " + ", ".join(f"{v:.2f} (step {k})" for k, v in s.explained_variance.items())
              + "; mean of the 5 steps up to each")
    print(f"wall time               {s.wall_seconds:.0f}s (warm-start {s.warmstart_seconds:.0f}s)")
    print(f"run directory           {s.run_dir}  (training.png, metrics.jsonl, adapter/, logs/)")
