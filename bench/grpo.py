"""A GRPO training step: ours (AdapterTrainer + the grpo objective) vs TRL 1.16's GRPOTrainer + peft LoRA.

    OMP_NUM_THREADS=1 python bench/grpo.py [--hidden 256 --layers 4 --prompts 2 --generations 8
                                            --completion 32 --steps 6 --beta 0.04]

Each variant runs in its own process on the same tiny Llama (built from a config, seeded, the built-in byte
tokenizer), LoRA r=16 on all linear layers, the same prompts, fp32 (TRL's bf16 autocast default off), the
same GRPO settings (num_generations, max_completion_length, temperature 1, beta, loss dapo), the Trainer's own
loop for `--steps` optimizer steps after one warm-up step:
- ours: `AdapterTrainer` with `training.objectives.grpo.GRPO` (the KL reference = our LoRA switched off);
- trl_peft: `trl.GRPOTrainer` given a `peft.LoraConfig` (the reference = peft's adapter switched off).
Printed: the median CPU time of an optimizer step (process CPU time between step ends, one thread: wall
time on a shared machine is noise), the CPU time spent inside `generate` and its share of the step, and the
ratio ours / TRL measured in the same run. The reward is a cheap function of the text (share of 'a').
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "dog", "sun", "tree", "blue", "fish", "rock", "milk"]


def _reward(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


def _prompts() -> list[str]:
    return [f"Repeat the word {w}." for w in WORDS]


class _Timer:
    """CPU time between optimizer-step ends, and CPU time inside `generate` per step."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.generation: list[float] = []
        self._gen = 0.0
        self._last: float | None = None

    def wrap(self, obj) -> None:
        original = obj.generate

        def generate(*args, **kwargs):
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self._gen += time.process_time() - start

        obj.generate = generate

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _StepEnd(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                now = time.process_time()
                if timer._last is not None:
                    timer.steps.append(now - timer._last)
                    timer.generation.append(timer._gen)
                timer._last, timer._gen = now, 0.0

        return _StepEnd()


def _model(args):
    import torch
    from transformers import LlamaForCausalLM

    from peft_framework.models.tiny import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(
        hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers
    )
    return LlamaForCausalLM(config)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_variant(name: str, args) -> dict[str, float]:
    import datasets
    import torch

    from peft_framework.models.tiny import tiny_tokenizer

    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer()
    timer = _Timer()
    out = tempfile.mkdtemp()
    common = dict(
        output_dir=out,
        max_steps=args.steps + 1,
        learning_rate=1e-4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        seed=0,
    )
    if name == "ours":
        from transformers import TrainingArguments

        from peft_framework.adapters import get_adapter
        from peft_framework.adapters.lora.config import LoraConfig
        from peft_framework.config.grpo_schema import GrpoConfig
        from peft_framework.training.objectives.grpo import GRPO
        from peft_framework.training.trainer import AdapterTrainer

        model = _model(args)
        method = get_adapter("lora")
        method.inject(model, LoraConfig(r=16, alpha=32, target_modules=TARGETS))
        reward = type("R", (), {"name": "a_share", "weight": 1.0, "__call__": staticmethod(_reward)})()
        from peft_framework.rewards import RewardScorer

        cfg = GrpoConfig(
            num_generations=args.generations, max_completion_length=args.completion, beta=args.beta
        )
        objective = GRPO(cfg, [reward], RewardScorer([reward], 0), seed=0, tokenizer=tokenizer)
        data = datasets.Dataset.from_dict(
            {"prompt_ids": [tokenizer.encode(p) for p in _prompts()], "prompt": _prompts()}
        )
        trainer = AdapterTrainer(
            model=model,
            args=TrainingArguments(
                per_device_train_batch_size=args.prompts, remove_unused_columns=False, **common
            ),
            train_dataset=data,
            data_collator=objective.collator(0),
            adapter_method=method,
            objective=objective,
            callbacks=[timer.callback()],
        )
        timer.wrap(model)
    else:
        import peft
        import trl

        config = trl.GRPOConfig(
            per_device_train_batch_size=args.prompts * args.generations,
            num_generations=args.generations,
            max_completion_length=args.completion,
            beta=args.beta,
            bf16=False,
            **common,
        )
        data = datasets.Dataset.from_dict({"prompt": _prompts()})
        lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM")
        trainer = trl.GRPOTrainer(
            model=_model(args),
            reward_funcs=[_reward],
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[timer.callback()],
        )
        timer.wrap(trainer.model)
    trainer.train()
    step = statistics.median(timer.steps)
    generation = statistics.median(timer.generation)
    return {"step_ms": step * 1e3, "generation_ms": generation * 1e3, "generation_share": generation / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--completion", type=int, default=32, help="max_completion_length")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--variant", choices=["ours", "trl_peft"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    for name in ("ours", "trl_peft"):
        cmd = [sys.executable, __file__, "--variant", name] + [
            f"--{k}={v}" for k, v in vars(args).items() if k != "variant"
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'variant':10} {'step (CPU)':>12} {'generate':>10} {'share':>7}")
    for name, r in results.items():
        print(f"{name:10} {r['step_ms']:10.1f}ms {r['generation_ms']:8.1f}ms {r['generation_share']:7.2f}")
    ours, trl = results["ours"], results["trl_peft"]
    print(f"step time ours / trl_peft: {ours['step_ms'] / trl['step_ms']:.2f}")
    print(f"generation time ours / trl_peft: {ours['generation_ms'] / trl['generation_ms']:.2f}")


if __name__ == "__main__":
    main()
