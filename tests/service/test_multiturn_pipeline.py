"""The pipeline with `source.environment`: multi-turn groups come out of next_batch scored by the environment, a row
whose environment cannot start is dropped with its reason and replaced, and held-out evaluation reports the tool use.

Real: the environment service (the built-in calculator, over loopback) and the pipeline, wired by
make_pipeline_source. Scripted: the generator (a gRPC stand-in that plays the calculator's tool-call
format on the token ids it is sent: a vLLM model cannot be made to choose its turns).
"""

from __future__ import annotations

import asyncio
import json
import re

from launcher.tiny_model import build_tokenizer
from learner.config import LearnerConfig
from learner.pipeline import make_pipeline_source
from learner.pipeline.dataset import PromptRow
from learner.pipeline.evaluate import evaluate
from rlfleet.config import ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from tests.service.multiturn_fixtures import calculator_service

TOKENIZER = build_tokenizer()


class CalculatorPlayer(generator_pb2_grpc.GeneratorServiceServicer):
    """Calls calc on the question, then repeats the tool's answer; every sample the same."""

    def __init__(self):
        self.prompts = 0

    async def GetInfo(self, request, context):
        return generator_pb2.GeneratorInfo(policy_version=0, max_model_len=512)

    async def Generate(self, request, context):
        for i, prompt in enumerate(request.prompts):
            self.prompts += 1
            text = TOKENIZER.decode(list(prompt.token_ids))
            tool = re.search(r"<\|tool\|>(.*?)<\|assistant\|>$", text)
            reply = tool.group(1) if tool else f"calc({re.search(r'<[|]user[|]>(.*?)<[|]assistant', text).group(1)})"
            ids = TOKENIZER(reply, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
            completion = common_pb2.Completion(token_ids=ids, logprobs=[-0.5] * len(ids), text=reply,
                                               finish_reason=common_pb2.FINISH_REASON_STOP)
            yield generator_pb2.GenerateResponse(prompt_index=i, prompt_id=prompt.prompt_id, prompt_ids=prompt.token_ids,
                                                 completions=[completion] * request.sampling.n, policy_version=0)


def test_pipeline_batches_are_multi_turn_groups_and_a_row_that_cannot_start_is_replaced(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"{a}*{b}", "answer": str(a * b)} for a, b in ((12, 11), (25, 4), (7, 9))]
    rows.insert(1, {"prompt": "1*1", "answer": None})   # the environment's reset raises: nothing to grade against
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))

    async def run():
        player = CalculatorPlayer()
        generator = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name="scripted-generator")
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(player, generator.grpc)
        await generator.start(["rlfleet.v1.GeneratorService"])
        await generator.set_ready()
        async with calculator_service() as env:
            config = LearnerConfig.model_validate(dict(
                model=tiny_model_dir, run_dir=tmp_path, generators=[f"127.0.0.1:{generator.port}"],
                source={"type": "pipeline", "dataset": str(dataset), "rewards": [], "group_size": 2,
                        "prompts_per_batch": 3, "max_staleness": 0, "max_tokens": 16, "retry_backoff_seconds": 0.2,
                        "environment": {"address": env.target, "tool_call_format": "compact"}}))
            source = make_pipeline_source(config)
            await source.start()
            source.set_policy_version(0)
            batch = await asyncio.wait_for(source.next_batch(), 60)
            await source.close()
            result = await evaluate([PromptRow("e", "6*7", "42", {"answer": "42"})], config)
        await generator.stop(0)
        return batch, result

    batch, result = asyncio.run(run())
    assert sorted(g.prompt_text for g in batch.groups) == [
        "<|user|>12*11<|assistant|>", "<|user|>25*4<|assistant|>", "<|user|>7*9<|assistant|>"]
    for group in batch.groups:
        for sample in group.samples:
            assert sample.reward == 1.0 and sample.reward_components == {"Calculator": 1.0}
            assert sample.trajectory.turns == 2 and sample.trajectory.tool_calls == 1
            assert sample.loss_mask.count(False) > 0  # the tool's observation, masked out
    dropped = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
    assert [(d["prompt_id"], d["reason"]) for d in dropped] == [("1", "environment_error")]
    assert "reset() raised ValueError: the row has no answer" in dropped[0]["detail"]
    assert result.mean_reward == 1.0 and result.trajectories["tool_call_rate"] == 1.0
    assert result.trajectories["turns_mean"] == 2.0
