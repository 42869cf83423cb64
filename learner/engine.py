"""The trained model: a PEFT LoRA adapter on a frozen base model, wrapped in a DeepSpeed engine.

`PolicyEngine` owns everything that touches DeepSpeed: distributed init (gloo on the CPU when not
started by the `deepspeed` launcher), per-token log-probs from the backbone's hidden states and the
frozen LM head, backward with caller-owned gradient-accumulation boundaries, the optimiser step,
the adapter as an in-memory PEFT payload, and DeepSpeed's part of a checkpoint. With a GAE
advantage it also holds the critic (learner/critic.py): a second adapter and a value head.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from learner.config import LearnerConfig
from learner.critic import ValueHead, add_critic_adapter, critic_adapter, is_critic_parameter

log = logging.getLogger(__name__)


def plain_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,
                         return_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """The unfused twin of `token_logprobs` (materialises [N, V] logits); kept as the test reference."""
    logp = torch.log_softmax((hidden @ weight.t()).float(), dim=-1)  # [N, V]
    picked = logp.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    entropy = -(logp.exp() * logp).sum(-1).detach() if return_entropy else None  # [N]
    return picked, entropy


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,
                   return_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """log p(target) [N] (and entropy [N], detached) from hidden states [N, H] and the LM head [V, H].

    The one place the learner turns hidden states into log-probs: the chunked kernel never holds
    the [N, V] logits at once (Triton on CUDA, its PyTorch twin elsewhere; fused logs which).
    """
    from fused import selective_logprobs

    return selective_logprobs(hidden, weight, targets, chunk_size=chunk_size, return_entropy=return_entropy)


class Backbone(nn.Module):
    """What DeepSpeed wraps: the PEFT model, whose forward returns the last hidden states (no logits),
    and the critic's value head when there is one."""

    def __init__(self, peft_model: nn.Module, value_head: ValueHead | None = None):
        super().__init__()
        self.peft_model = peft_model
        self.value_head = value_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, value_positions: Tensor | None = None) -> Tensor:
        """Hidden states [B, L, H] of the policy; with `value_positions` [B, T], the critic's values [B, T]
        there (the head runs inside the engine's forward, where ZeRO-3 has gathered its weights)."""
        decoder = self.peft_model.get_base_model().model
        if value_positions is None:
            return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        with critic_adapter(self.peft_model):
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        index = value_positions[:, :, None].expand(-1, -1, hidden.shape[-1])  # [B, T, H]
        return self.value_head(hidden.gather(1, index))  # [B, T]


def init_distributed() -> None:
    """Joins the process group; a lone process (no launcher) becomes rank 0 of 1 over gloo."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)


def _lr_lambda(config: LearnerConfig):
    warmup = config.deepspeed.warmup_steps
    total = config.max_steps * config.updates_per_batch
    cosine = config.deepspeed.schedule == "cosine"

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / (warmup + 1)
        if not cosine:
            return 1.0
        progress = min((update - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def deepspeed_config(config: LearnerConfig) -> dict:
    """The DeepSpeed JSON config: micro-batch size 1 and accumulation 1, because the trainer owns
    accumulation (a variable number of token-budget micro-batches per update)."""
    ds = config.deepspeed
    zero: dict = {"stage": ds.zero_stage}
    if ds.cpu_adam and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": ds.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


@dataclass(frozen=True)
class StepInfo:
    """What one optimiser update reports."""

    grad_norm: float
    lr: float


class PolicyEngine:
    """LoRA-on-base-model under DeepSpeed; see the module docstring."""

    def __init__(self, config: LearnerConfig):
        import deepspeed
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlfleet.adapters import base_model_id, resolve_model_dir

        self.config = config
        init_distributed()
        torch.manual_seed(config.seed)
        model_dir = resolve_model_dir(config.model)
        self.model_dir = model_dir
        self.base_model_id = base_model_id(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        dtype = torch.bfloat16 if config.deepspeed.dtype == "bf16" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.max_len = int(getattr(base.config, "max_position_embeddings", 0)) or None
        self.vocab_size = int(base.config.vocab_size)   # token ids index the embedding: each must be below
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")
        self.peft_model = get_peft_model(base, lora)
        self.peft_model.peft_config["default"].base_model_name_or_path = str(model_dir)
        value_head = None
        if config.algo.needs_critic:
            add_critic_adapter(self.peft_model, lora)
            value_head = ValueHead(base.config.hidden_size, dtype)
        self.module = Backbone(self.peft_model, value_head)
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=self._optimizer(),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config)),
            config=deepspeed_config(config))
        self.lm_head = self._frozen_lm_head()  # [V, H]
        log.info("learner engine: ZeRO-%d %s, %d trainable parameters, device %s", config.deepspeed.zero_stage,
                 config.deepspeed.dtype, sum(p.numel() for p in trainable), self.engine.device)

    def _frozen_lm_head(self) -> Tensor:
        """The LM-head weight [V, H]. Under ZeRO-3 it is partitioned and the kernel saves it for backward,
        which runs after any GatheredParameters context has re-partitioned it; the head is frozen, so
        one gathered copy per rank serves every step."""
        weight = self.peft_model.get_output_embeddings().weight
        if self.config.deepspeed.zero_stage < 3:
            return weight
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return weight.detach().clone()

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters: the policy adapter, and the critic in its own group (its lr)."""
        ds = self.config.deepspeed
        kwargs = dict(lr=ds.lr, betas=ds.betas, eps=ds.eps, weight_decay=ds.weight_decay)
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if not is_critic_parameter(n)]}]
        critic = [p for n, p in named if is_critic_parameter(n)]
        if critic:
            groups.append({"params": critic, "lr": self.config.algo.value.lr or ds.lr})
        if ds.cpu_adam:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
        return torch.optim.AdamW(groups, **kwargs)

    @property
    def has_critic(self) -> bool:
        return self.module.value_head is not None

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank()

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size()

    def all_reduce_sum_tensor(self, tensor: Tensor) -> Tensor:
        """Sum of `tensor` over data-parallel ranks (itself in one process)."""
        if self.world_size == 1:
            return tensor
        summed = tensor.to(self.device)
        torch.distributed.all_reduce(summed)
        return summed.to(tensor.device)

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key sums of float stats over ranks (every rank holds the same keys)."""
        if self.world_size == 1:
            return dict(values)
        keys = sorted(values)
        summed = self.all_reduce_sum_tensor(torch.tensor([values[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, summed.tolist(), strict=True))

    def logprobs(self, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, targets: Tensor,
                 valid: Tensor, return_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Per-token log-probs [B, T] (0 where not `valid`) of `targets` at hidden `positions`.

        input_ids/attention_mask [B, L]; positions/targets [B, T] long; valid [B, T] bool.
        """
        device = self.device
        hidden = self.engine(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))  # [B, L, H]
        index = positions.to(device)[:, :, None].expand(-1, -1, hidden.shape[-1])  # [B, T, H]
        picked = hidden.gather(1, index)  # [B, T, H]
        valid = valid.to(device)
        lp, entropy = token_logprobs(picked[valid], self.lm_head, targets.to(device)[valid],
                                     chunk_size=self.config.logprob_chunk_size, return_entropy=return_entropy)
        out = torch.zeros(valid.shape, dtype=torch.float32, device=device)  # [B, T]
        out = out.masked_scatter(valid, lp)
        if entropy is None:
            return out, None
        return out, torch.zeros_like(out).masked_scatter(valid, entropy)

    def values(self, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        """The critic's values [B, T] (0 where not `valid`) of the states at hidden `positions`: V_t is the
        value of the prefix that predicts completion token t. Shapes as in `logprobs`."""
        device = self.device
        values = self.engine(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             value_positions=positions.to(device))  # [B, T]
        return torch.where(valid.to(device), values, 0.0)

    def reference_mode(self):
        """Context in which the forward is the frozen base model (the adapter disabled)."""
        return self.peft_model.disable_adapter()

    def backward(self, loss: Tensor, is_last_micro_batch: bool) -> None:
        """Accumulates the gradient of `loss`, already normalised over the whole mini-batch (no GAS scaling)."""
        self.engine.set_gradient_accumulation_boundary(is_last_micro_batch)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> StepInfo:
        """Clips, applies one optimiser update, advances the LR schedule and zeroes the gradients."""
        norm = None if self.config.deepspeed.zero_stage else self._grad_norm()
        self.engine.step()
        reported = self.engine.get_global_grad_norm()
        if reported is not None:
            norm = float(reported)
        return StepInfo(grad_norm=float("nan") if norm is None else norm, lr=float(self.scheduler.get_last_lr()[0]))

    def gradients_finite(self) -> bool:
        """Whether every accumulated gradient (this update's, before `step`) is finite, on every rank.

        Checked here rather than left to DeepSpeed: only its fp16 loss scaler and some ZeRO paths look
        for overflow, and a NaN that reaches the optimiser turns every LoRA weight into NaN for good.
        """
        from deepspeed.utils import safe_get_full_grad

        finite = True
        for param in self.lora_parameters().values():   # every one, no early exit: under ZeRO-3 each is a collective
            grad = safe_get_full_grad(param)
            finite = finite and (grad is None or bool(torch.isfinite(grad).all()))
        if self.world_size > 1:
            flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = bool(flag.item() == 1.0)
        return finite

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def full_gradients(self) -> dict[str, Tensor]:
        """The accumulated (not yet stepped) gradient of every LoRA parameter, gathered across ZeRO shards."""
        from deepspeed.utils import safe_get_full_grad

        return {n: safe_get_full_grad(p).detach().clone() for n, p in self.lora_parameters().items()}

    def discard_gradients(self) -> None:
        """Drops accumulated gradients without an update (tests and aborted steps)."""
        self.engine.optimizer.zero_grad()
        self.engine.zero_grad()

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def _gathered(self, params: list[nn.Parameter]):
        """Under ZeRO-3, materialises partitioned parameters for the duration; a no-op otherwise."""
        if self.config.deepspeed.zero_stage < 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield

    def adapter_state(self) -> tuple[str, dict[str, Tensor]]:
        """The adapter as PEFT saves it: config JSON and CPU fp32 tensors named without the adapter name."""
        from peft.utils import get_peft_model_state_dict

        with self._gathered(list(self.lora_parameters().values())):
            state = get_peft_model_state_dict(self.peft_model)
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}
        config = self.peft_model.peft_config["default"].to_dict()
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        return json.dumps(config, indent=2, sort_keys=True), tensors

    def save_engine_state(self, folder: Path) -> None:
        """DeepSpeed's part of a checkpoint: trainable weights, optimiser and scheduler states."""
        self.engine.save_checkpoint(str(folder), tag="deepspeed", exclude_frozen_parameters=True)

    def load_engine_state(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag="deepspeed", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {folder}")
        # LambdaLR writes the lr into the optimiser only on step(), and DeepSpeed 0.19's ZeRO loader
        # (elastic checkpoint format) restores the moments but not the param-group lr: without this the first update
        # after a resume runs at the initial (warm-up) lr.
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
