"""Bad input is one line: every case exits non-zero with exactly one line on stderr,
and that line names the offending config key, flag or file. The CLI runs in-process
(`cli.main`); each case fails before anything slow runs, except the few that need a
model (non-finite weights), which use the tiny preset."""

import os

import numpy as np
import pytest

from selfimprove_jax import cli
from selfimprove_jax.runtime.files import WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
TOOL = os.path.join(ROOT, "configs", "tool_arithmetic.py")
GAME = os.path.join(ROOT, "configs", "guess_number.py")
CODE = os.path.join(ROOT, "configs", "code_multiturn.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Bad files, made once: named by what is wrong with them."""
  d = tmp_path_factory.mktemp("bad_files")
  f = {}
  def write(name, data):
    path = str(d / name)
    with open(path, "wb") as fh:
      fh.write(data)
    return path
  f["not_utf8"] = write("latin1.jsonl", b'{"prompt": "caf\xe9", "answer": "1"}\n')
  f["bad_json"] = write("bad.jsonl", b'{"prompt": "1+1", "answer": \n')
  f["no_answer"] = write("noanswer.jsonl", b'{"prompt": "1+1"}\n')
  f["empty"] = write("empty.jsonl", b"\n\n")
  f["both_answers"] = write("both.jsonl", b'{"prompt": "1+1", "answer": "2", "hidden_answer": "2"}\n'
                            b'{"prompt": "2+2", "answer": "4"}\n')
  f["all_unlabeled"] = write("unlabeled.jsonl", b'{"prompt": "1+1"}\n{"prompt": "2+2"}\n')
  f["bad_kind"] = write("kind.jsonl", b'{"prompt": "1+1", "answer": "2", "answer_kind": "maths"}\n'
                        b'{"prompt": "2+2", "answer": "4"}\n')
  f["prompts_not_utf8"] = write("prompts.jsonl", b'{"prompt": "\xff\xfe"}\n')
  f["prompts_no_key"] = write("prompts2.jsonl", b'{"text": "hi"}\n')
  # public layouts (tasks/layouts.py): the first record sets the layout, a later one breaks it
  ok_gsm8k = b'{"question": "1+1?", "answer": "#### 2"}\n'
  f["gsm8k_ok"] = write("gsm8k_ok.jsonl", ok_gsm8k + b'{"question": "2+2?", "answer": "#### 4"}\n')
  f["gsm8k_no_hashes"] = write("gsm8k.jsonl", ok_gsm8k + b'{"question": "2+2?", "answer": "4"}\n')
  f["math_no_boxed"] = write("math.jsonl", b'{"problem": "1+1?", "solution": "$\\\\boxed{2}$"}\n'
                             b'{"problem": "2+2?", "solution": "it is 4"}\n')
  f["no_layout"] = write("nolayout.jsonl", b'{"query": "1+1?", "response": "2"}\n')
  f["chat_multiturn"] = write("chat.jsonl", b'{"prompt": [{"role": "user", "content": "hi"}, '
                              b'{"role": "assistant", "content": "yo"}], "answer": "1"}\n')
  ok_mbpp = (b'{"text": "Add.", "code": "def add(a, b): return a + b", '
             b'"test_list": ["assert add(1, 2) == 3"], "test_setup_code": ""}\n')
  f["mbpp_no_tests"] = write("mbpp.jsonl", ok_mbpp + b'{"text": "Sub.", "test_list": []}\n')
  f["mbpp_no_function"] = write("mbpp2.jsonl", ok_mbpp + b'{"text": "Len.", "code": "", '
                                b'"test_list": ["assert len([1]) == 1"]}\n')
  ok_he = (b'{"prompt": "def f(x):\\n    \\"\\"\\"x\\"\\"\\"\\n", "entry_point": "f", '
           b'"test": "def check(c):\\n    assert c(1) == 1\\n"}\n')
  f["humaneval_no_test"] = write("he.jsonl", ok_he + b'{"prompt": "def g(x):\\n  pass\\n", '
                                 b'"entry_point": "g", "test": ""}\n')
  f["humaneval_no_stub"] = write("he2.jsonl", ok_he + b'{"prompt": "Write g.", '
                                 b'"entry_point": "g", "test": "def check(c): pass"}\n')
  f["bad_parquet"] = write("bad.parquet", b"PAR1 not parquet")
  f["cfg_none"] = write("none_config.py", b"def get_config():\n  return None\n")
  f["cfg_syntax"] = write("syntax_config.py", b"def get_config(:\n")
  f["cfg_nofn"] = write("nofn_config.py", b"X = 1\n")
  f["cfg_raises"] = write("raises_config.py", b"raise RuntimeError('boom')\n")
  f["cfg_dict"] = write("dict_config.py", b"def get_config():\n  return {'seed': 0}\n")
  f["a_file"] = write("plain_file", b"not a directory\n")
  full = d / "full_out"
  full.mkdir()
  (full / "x").write_text("taken")
  f["nonempty_dir"] = str(full)
  f["run_without_manifest"] = str(d / "orphan_run")
  os.makedirs(os.path.join(f["run_without_manifest"], "checkpoints", "0"))
  f["locked"] = str(d / "locked_run")
  os.makedirs(f["locked"])
  f["nan_model"] = _nan_model(str(d / "nan_model"))
  f["no_system_role"] = _no_system_role(f["nan_model"], str(d / "no_system_role"))
  f.update(_unsupported_configs(d))
  f["records_run"], f["bad_records_run"] = _records_runs(d)
  f["dir"] = str(d)
  return f


def _records_runs(d):
  """Two workdirs with records/: one whose stage file reads, one whose does not."""
  from selfimprove_jax.records import Sample
  from selfimprove_jax.stage_cache import RunRecords
  good, bad = str(d / "records_run"), str(d / "bad_records_run")
  RunRecords(good).write(1, "acquire", [Sample(problem_id="p")])
  RunRecords(bad).write(1, "acquire", [Sample(problem_id="p")])
  with open(os.path.join(bad, "records", "iter_0001", "acquire.parquet"), "wb") as fh:
    fh.write(b"PAR1 cut short")
  return good, bad


def _unsupported_configs(d):
  """HF directories whose config.json names a variant the decoder does not compute
  (refused while reading config.json, before any weights)."""
  import json
  qwen3 = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "intermediate_size": 128, "vocab_size": 128}
  mistral = dict(qwen3, architectures=["MistralForCausalLM"], sliding_window=4096)
  variants = {
      "qwen3_bias": dict(qwen3, attention_bias=True),
      "qwen3_yarn": dict(qwen3, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
      "qwen3_moe": dict(qwen3, architectures=["Qwen3MoeForCausalLM"], num_experts=8),
      "mistral_window_rope": dict(mistral, rope_scaling={
          "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
  }
  for name, cfg in variants.items():
    os.makedirs(d / name)
    with open(d / name / "config.json", "w") as fh:
      json.dump(cfg, fh)
  return {name: str(d / name) for name in variants}


def _nan_model(out):
  """An HF directory of the tiny preset with one NaN weight."""
  from safetensors.numpy import load_file, save_file
  assert cli.main(["export", "--model", "tiny", "--out", out]) == 0
  path = os.path.join(out, "model.safetensors")
  tensors = load_file(path)
  name = sorted(tensors)[0]
  tensors[name] = tensors[name].copy()
  tensors[name].flat[0] = np.nan
  save_file(tensors, path, metadata={"format": "pt"})
  return out


def _no_system_role(model, out):
  """`model` with a chat template that refuses a system turn (as some templates do);
  its NaN weights show that the template is tried before the weights are read."""
  import shutil
  shutil.copytree(model, out)
  with open(os.path.join(out, "chat_template.jinja"), "w") as f:
    f.write("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
            "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
  return out


def _run(*overrides, config=TINY, workdir=None):
  return ["run", "--config", config, "--workdir", workdir or "{dir}/w", *overrides]


CASES = [
    # ---- config keys: non-finite, out of range, wrong type, unknown
    (_run("--config.optim.learning_rate=nan"), "optim.learning_rate"),
    (_run("--config.optim.learning_rate=inf"), "optim.learning_rate"),
    (_run("--config.optim.learning_rate=-0.1"), "optim.learning_rate"),
    (_run("--config.optim.b2=1.5"), "optim.b2"),
    (_run("--config.optim.max_update_ratio=-1"), "optim.max_update_ratio"),
    (_run("--config.optim.loss=ppo"), "optim.loss"),
    (_run("--config.optim.schedule_horizon=whole_run"), "optim.schedule_horizon"),
    (_run("--config.select.replay=-1"), "select.replay"),
    (_run("--config.train.batch_size=0"), "train.batch_size"),
    (_run("--config.train.epochs=0"), "train.epochs"),
    (_run("--config.train.max_seq_len=1"), "train.max_seq_len"),
    (_run("--config.train.max_seq_len=4"), "train.max_seq_len"),   # no prompt fits
    (_run("--config.train.batch_size=abc"), "train.batch_size"),
    (_run("--config.loop.iterations=-1"), "loop.iterations"),
    (_run("--config.loop.prompts_per_iteration=0"), "loop.prompts_per_iteration"),
    (_run("--config.loop.samples_per_prompt=0"), "loop.samples_per_prompt"),
    (_run("--config.loop.algorithm=grpo", "--config.loop.samples_per_prompt=1"),
     "loop.samples_per_prompt"),
    (_run("--config.loop.algorithm=ppo"), "loop.algorithm"),
    (_run("--config.loop.algorithm=dpo", "--config.select.filters=correct"), "select.filters"),
    (_run("--config.optim.continue_state=true", "--config.loop.restart_from_base=true"),
     "optim.continue_state"),
    (_run("--config.optim.update_per_array=maybe"), "optim.update_per_array"),
    # ---- paradigms (paradigms/): what each cannot do
    (_run("--config.loop.algorithm=self_play", "--config.loop.samples_per_prompt=1"),
     "loop.samples_per_prompt"),
    (_run("--config.loop.algorithm=ttrl", "--config.loop.samples_per_prompt=1"),
     "loop.samples_per_prompt"),
    (_run("--config.loop.algorithm=self_play", "--config.select.filters=correct"),
     "select.filters"),
    (_run("--config.loop.algorithm=self_play", "--config.task.name=code_jsonl:x.jsonl"),
     "task.name"),
    (_run("--config.loop.algorithm=spin", "--config.select.filters=correct,dedup"),
     "select.filters"),
    (_run("--config.loop.algorithm=ttrl", "--config.acquire.refine_strategy=self_consistency"),
     "acquire.refine_strategy"),
    (_run("--config.loop.algorithm=spin", "--config.judge.use_as_reward=true"),
     "judge.use_as_reward"),
    (_run("--config.self_play.invalid_reward=0.5"), "self_play.invalid_reward"),
    (_run("--config.self_play.max_level=-1"), "self_play.max_level"),
    (_run("--config.loop.no_such_key=1"), "loop.no_such_key"),
    (_run("--config.task.heldout_size=0"), "task.heldout_size"),
    (_run("--config.select.dedup_threshold=2"), "select.dedup_threshold"),
    (_run("--config.select.filters=correct,shiny"), "select.filters"),
    (_run("--config.select.min_pass_rate=0.9", "--config.select.max_pass_rate=0.1"),
     "select.min_pass_rate"),
    (_run("--config.sampling.temperature=nan"), "sampling.temperature"),
    (_run("--config.sampling.top_p=0"), "sampling.top_p"),
    (_run("--config.evaluate.maj_k=0"), "evaluate.maj_k"),
    (_run("--config.evaluate.max_regression=nan"), "evaluate.max_regression"),
    (_run("--config.evaluate.strategies=magic"), "evaluate.strategies"),
    (_run("--config.task.test_size=-1"), "task.test_size"),
    (_run("--config.task.fresh_size=-2"), "task.fresh_size"),
    (_run("--config.evaluate.rules=watch_truncated"), "evaluate.rules"),
    (_run("--config.evaluate.rules=test_pass@1<0.5:stop"), "evaluate.rules"),
    (_run("--config.evaluate.rules=watch_shiny>0.5:stop"), "evaluate.rules"),
    (_run("--config.evaluate.rules=watch_truncated>0.5:explode"), "evaluate.rules"),
    (_run("--config.evaluate.rules=watch_truncated>0.5:temperature+0"), "evaluate.rules"),
    (_run("--config.evaluate.rules=watch_truncated>0.5:stop+1"), "evaluate.rules"),
    (_run("--config.evaluate.rules=watch_truncated>0.5:algorithm=magic"), "evaluate.rules"),
    (_run("--config.select.filters=correct",
          "--config.evaluate.rules=watch_truncated>0.5:algorithm=dpo"), "evaluate.rules"),
    (_run("--config.evaluate.rules=watch_truncated>0.5:filters=correct+shiny"),
     "evaluate.rules"),
    (_run("--config.task.name=reasoning_gym:leg_counting",
          "--config.evaluate.rules=pass@1<0.5:harder"), "evaluate.rules"),
    (_run("--config.acquire.self_instruct_share=1.5"), "acquire.self_instruct_share"),
    (_run("--config.acquire.label_free=true"), "acquire.label_free"),
    (_run("--config.acquire.label_free=true", "--config.acquire.refine_strategy=self_consistency",
          "--config.acquire.rationalize=true"), "acquire.rationalize"),
    (_run("--config.acquire.label_free=true", "--config.acquire.refine_strategy=self_consistency",
          "--config.judge.use_as_reward=true"), "judge.use_as_reward"),
    (_run("--config.acquire.rationalize=true", "--config.loop.algorithm=grpo"),
     "acquire.rationalize"),
    # ---- multi-turn environments (environments/)
    (_run("--config.environment.name=chess"), "environment.name"),
    (_run("--config.environment.name=guess_number", "--config.environment.max_turns=0"),
     "environment.max_turns"),
    (_run("--config.environment.name=guess_number", "--config.environment.max_tokens=1"),
     "environment.max_tokens"),
    (_run("--config.environment.name=guess_number", "--config.loop.algorithm=spin"),
     "environment.name"),
    (_run("--config.environment.name=python_tool", "--config.acquire.rationalize=true"),
     "acquire.rationalize"),
    (_run("--config.environment.name=guess_number", "--config.environment.max_tokens=4096"),
     "environment.max_tokens"),
    (_run("--config.model=tiny", "--config.environment.options.timeout_s=0",
          config=TOOL), "environment.options.timeout_s"),
    (_run("--config.model=tiny", "--config.environment.options.observation=tool",
          config=TOOL), "environment.options.observation"),
    (_run("--config.model=tiny", "--config.environment.options.reward=shaped", config=GAME),
     "environment.options.reward='shaped' must be one of outcome, progress"),
    (_run("--config.model=tiny", "--config.environment.options.max_chars=10", config=CODE),
     "environment.options.max_chars=10 must be an integer >= 40"),
    (_run("--config.model=tiny", "--config.task.difficulty=9", config=GAME), "difficulty"),
    (_run("--config.model=tiny", "--config.task.name=arithmetic", config=GAME),
     "plays only task guess_number"),
    (_run("--config.environment.name=guess_number", "--config.evaluate.strategies=best_of_n"),
     "evaluate.strategies"),
    (_run("--config.environment.name=code_feedback", "--config.environment.max_tokens=64"),
     "plays code:* and code_jsonl: tasks"),
    # ---- chains: the parent run
    (_run("--config.model={dir}/no_run@1"), "{dir}/no_run"),
    (_run("--config.model=parent"), "parent.config"),
    (_run("--config.model=parent", "--config.parent.config={dir}/nope.py"), "{dir}/nope.py"),
    (_run("--config.log.plot=maybe"), "log.plot"),
    (_run("--config.dtype=float16"), "dtype"),
    (_run("--config.lora.rank=-1"), "lora.rank"),
    (_run("--config.lora.rank=4", "--config.lora.dropout=0.5"), "lora.dropout"),
    (_run("--config.prompt_format=plain"), "prompt_format"),
    (_run("--config.prompt_format=raw", "--config.prompt_template=Q: prompt A:"),
     "prompt_template"),
    (_run("--config.prompt_format=raw", "--config.system_prompt=Be brief."), "system_prompt"),
    (_run("--config.chat_template_kwargs=enable_thinking"), "chat_template_kwargs"),
    (_run("--config.chat_template_kwargs=tokenize=false"), "chat_template_kwargs"),
    (_run("--config.model={no_system_role}", "--config.system_prompt=Be brief."),
     "system_prompt"),
    (_run("--config.mesh.data=0"), "mesh.data"),
    (_run("--config.mesh.data=3"), "mesh"),
    (_run("--config.seed"), "--config.seed"),
    (_run("--bogus"), "--bogus"),
    # ---- task specs and task files
    (_run("--config.task.name=no_such_task"), "no_such_task"),
    (_run("--config.task.name=jsonl:/nonexistent/problems.jsonl"), "/nonexistent/problems.jsonl"),
    (_run("--config.task.name=jsonl:{not_utf8}"), "{not_utf8}"),
    (_run("--config.task.name=jsonl:{bad_json}"), "{bad_json}"),
    (_run("--config.task.name=jsonl:{no_answer}"), "{no_answer}"),
    (_run("--config.task.name=jsonl:{empty}"), "{empty}"),
    (_run("--config.task.name=jsonl:{both_answers}"), "{both_answers}"),
    (_run("--config.task.name=jsonl:{all_unlabeled}"), "{all_unlabeled}"),
    (["eval", "--task", "jsonl:{no_answer}", "--task_option", "answer_kind=roman"],
     "{no_answer}"),
    (_run("--config.task.name=jsonl:{bad_kind}"), "{bad_kind}"),
    (["eval", "--task", "jsonl:{no_answer}", "--task_option", "math_timeout_s=0"],
     "math_timeout_s"),
    (_run("--config.task.name=code:no_such_family"), "code:no_such_family"),
    (_run("--config.task.name=code_jsonl:{not_utf8}"), "{not_utf8}"),
    (_run("--config.task.name=code_jsonl:{no_answer}"), "{no_answer}"),
    (_run("--config.task.name=code_jsonl:/nonexistent/code.jsonl"), "/nonexistent/code.jsonl"),
    # ---- public layouts (tasks/layouts.py): malformed records and options
    (_run("--config.task.name=jsonl:{gsm8k_no_hashes}"), "{gsm8k_no_hashes}:2"),
    (_run("--config.task.name=jsonl:{math_no_boxed}"), "{math_no_boxed}:2"),
    (_run("--config.task.name=jsonl:{no_layout}"), "prompt_field="),
    (_run("--config.task.name=jsonl:{chat_multiturn}"), "{chat_multiturn}:1"),
    (_run("--config.task.name=jsonl:{bad_parquet}"), "{bad_parquet}"),
    (_run("--config.task.name=code_jsonl:{mbpp_no_tests}"), "{mbpp_no_tests}:2"),
    (_run("--config.task.name=code_jsonl:{mbpp_no_function}"), "{mbpp_no_function}:2"),
    (_run("--config.task.name=code_jsonl:{humaneval_no_test}"), "{humaneval_no_test}:2"),
    (_run("--config.task.name=code_jsonl:{humaneval_no_stub}"), "{humaneval_no_stub}:2"),
    (_run("--config.task.name=code_jsonl:{no_layout}"), "format="),
    (["eval", "--task", "jsonl:{gsm8k_ok}", "--task_option", "format=csv"], "format"),
    (["eval", "--task", "code_jsonl:{humaneval_no_stub}", "--task_option", "format=gsm8k"],
     "format"),
    (["eval", "--task", "jsonl:{gsm8k_ok}", "--task_option", "test_path=/nonexistent/t.jsonl"],
     "test_path: /nonexistent/t.jsonl"),
    # ---- model specs
    (_run("--config.model=/nonexistent/model_dir"), "/nonexistent/model_dir"),
    (["generate", "--model", "no_such_preset", "--prompt", "hi"], "no_such_preset"),
    (["eval", "--model", "{run_without_manifest}"], "{run_without_manifest}"),
    (["eval", "--model", "{dir}@3"], "{dir}"),
    (["generate", "--model", "{nan_model}", "--prompt", "hi"], "{nan_model}"),
    (["export", "--model", "{nan_model}", "--out", "{dir}/nan_export"], "{nan_model}"),
    # a Hub id absent from the local HF cache: never downloaded, one line naming it
    (["generate", "--model", "no-such-org/no-such-model", "--prompt", "hi"],
     "no-such-org/no-such-model"),
    # Qwen3 / Mistral variants the decoder does not compute name their config field
    (["generate", "--model", "{qwen3_bias}", "--prompt", "hi"],
     "{qwen3_bias}/config.json: attention_bias"),
    (["generate", "--model", "{qwen3_yarn}", "--prompt", "hi"], "rope_scaling rope_type 'yarn'"),
    (["eval", "--model", "{qwen3_moe}"], "Qwen3MoeForCausalLM"),
    (["export", "--model", "{mistral_window_rope}", "--out", "{dir}/e2"],
     "{mistral_window_rope}/config.json: Mistral sliding_window together with rope_scaling"),
    # ---- config files
    (_run(config="/nonexistent/config.py"), "/nonexistent/config.py"),
    (_run(config="{cfg_none}"), "{cfg_none}"),
    (_run(config="{cfg_syntax}"), "{cfg_syntax}"),
    (_run(config="{cfg_nofn}"), "{cfg_nofn}"),
    (_run(config="{cfg_raises}"), "{cfg_raises}"),
    (_run(config="{cfg_dict}"), "{cfg_dict}"),
    # ---- workdirs
    (_run(workdir="{a_file}"), "{a_file}"),
    (_run(workdir="{a_file}/sub"), "{a_file}/sub"),
    (_run(workdir="{locked}"), "{locked}"),
    # ---- flags
    (["generate", "--prompt", "hi", "--temperature", "nan"], "--temperature"),
    (["generate", "--prompt", "hi", "--temperature", "inf"], "--temperature"),
    (["generate", "--prompt", "hi", "--temperature", "-1"], "--temperature"),
    (["generate", "--prompt", "hi", "--n", "0"], "--n"),
    (["generate", "--prompt", "hi", "--n", "abc"], "--n"),
    (["generate", "--prompt", "hi", "--top_p", "1.5"], "--top_p"),
    (["generate", "--prompt", "hi", "--max_new_tokens", "0"], "--max_new_tokens"),
    (["generate", "--prompt", "hi", "--strategy", "magic"], "magic"),
    (["generate", "--prompt", "hi", "--strategy", "execution_feedback", "--refine_rounds", "0"],
     "--refine_rounds"),
    (["generate", "--prompts_file", "{prompts_not_utf8}"], "{prompts_not_utf8}"),
    (["generate", "--prompts_file", "{prompts_no_key}"], "{prompts_no_key}"),
    (["generate", "--prompts_file", "/nonexistent/prompts.jsonl"], "/nonexistent/prompts.jsonl"),
    (["generate"], "--prompt"),
    (["generate", "--prompt", "hi", "--chat_template_kwargs", "=1"], "chat_template_kwargs"),
    (["generate", "--prompt", "hi", "--raw", "--system_prompt", "Be brief."], "system_prompt"),
    (["generate", "--model", "{no_system_role}", "--prompt", "hi", "--system_prompt", "Be."],
     "system_prompt"),
    (["eval", "--chat_template_kwargs", "a b=1"], "chat_template_kwargs"),
    (["eval", "--k", "0"], "--k"),
    (["eval", "--n", "0"], "--n"),
    (["eval", "--temperature", "nan"], "--temperature"),
    (["eval", "--task", "no_such_task"], "no_such_task"),
    (["eval", "--strategies", "magic"], "magic"),
    (["eval", "--task_option", "operators"], "--task_option"),
    (["eval", "--task_option", "operators=%"], "operators"),
    (["eval", "--seed", "-1"], "--seed"),
    (["export", "--model", "tiny", "--out", "{a_file}/sub"], "{a_file}/sub"),
    (["export", "--model", "tiny", "--out", "{nonempty_dir}"], "{nonempty_dir}"),
    (["export", "--model", "/nonexistent/weights.gguf", "--out", "{dir}/e"],
     "/nonexistent/weights.gguf"),
    (["export", "--model", "tiny", "--out", "{dir}/e16", "--dtype", "int8"], "--dtype"),
    # adapters asked of a model that has none (not a LoRA run)
    (["export", "--model", "tiny", "--out", "{dir}/ep", "--peft"], "--peft"),
    # ---- records export: a run's stage files as JSON Lines
    (["records", "export", "/nonexistent/run"], "/nonexistent/run"),
    (["records", "export"], "workdir"),
    (["records", "export", "{records_run}", "--out", "{nonempty_dir}"], "{nonempty_dir}"),
    (["records", "export", "{records_run}", "--out", "{a_file}"], "{a_file}"),
    (["records", "export", "{records_run}", "--out", "{records_run}/records/x"],
     "{records_run}/records/x is inside the run's records/"),
    (["records", "export", "{bad_records_run}", "--out", "{dir}/rx"],
     "{bad_records_run}/records/iter_0001/acquire.parquet"),
    # the lost-process watchdog needs a positive deadline
    (_run("--lost_process_timeout", "0"), "--lost_process_timeout"),
]


def _call(argv):
  try:
    return cli.main(argv)
  except SystemExit as e:   # argparse
    return e.code


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(c[0])[:70] for c in CASES])
def test_bad_input_is_one_line_naming_it(argv, names, files, capfd):
  argv = [a.format(**files) for a in argv]
  names = names.format(**files)
  with WorkdirLock(files["locked"]):   # another "run" holds this workdir
    code = _call(argv)
  err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
  assert code not in (0, None), err
  assert len(err) == 1, err
  assert names in err[0], err
  assert "Traceback" not in err[0]


def test_there_are_at_least_forty_cases():
  assert len(CASES) >= 40


def test_locked_workdir_names_the_holder(files, capfd):
  with WorkdirLock(files["locked"]):
    code = _call(_run(workdir=files["locked"]))
  err = capfd.readouterr().err
  assert code == 2 and f"pid {os.getpid()}" in err and "in use" in err


def test_stale_lock_file_does_not_block(tmp_path):
  lock = WorkdirLock(str(tmp_path))
  with lock:
    pass
  assert os.path.exists(tmp_path / ".lock")   # the file stays; the flock is gone
  with open(tmp_path / ".lock", "w") as f:
    f.write("pid 1 on host elsewhere\n")
  with WorkdirLock(str(tmp_path)):
    pass


def test_unexpected_error_is_one_line_with_debug_hint(monkeypatch, capfd):
  def broken(args):
    raise RuntimeError("something\ninternal")
  monkeypatch.setattr(cli, "_cmd_eval", broken)
  assert _call(["eval"]) == 1
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "RuntimeError: something internal" in err[0] and "--debug" in err[0]
  with pytest.raises(RuntimeError):
    cli.main(["eval", "--debug"])


def test_disk_errors_name_the_path(monkeypatch, capfd):
  import errno
  def full(args):
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/3")
    except OSError as e:
      raise RuntimeError("save failed") from e   # as Orbax wraps it
  monkeypatch.setattr(cli, "_cmd_eval", full)
  assert _call(["eval"]) == 1
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1
  assert "/runs/x/checkpoints/3" in err[0] and "No space left on device" in err[0]


def test_bad_environment_variables_are_one_line(files, tmp_path, monkeypatch, capfd):
  """Environment variables are input too: SELFIMPROVE_JAX_COMPILATION_CACHE naming a
  file, SELFIMPROVE_JAX_VERIFY naming no mode; one line naming the variable."""
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("SELFIMPROVE_JAX_COMPILATION_CACHE", files["a_file"])
  assert _call(["export", "--model", "tiny", "--out", f"{files['dir']}/env"]) == 2
  err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and "SELFIMPROVE_JAX_COMPILATION_CACHE" in err[0], err
  monkeypatch.setenv("SELFIMPROVE_JAX_COMPILATION_CACHE", "off")
  from selfimprove_jax.runtime.checkpoint import Checkpointer
  Checkpointer(str(tmp_path / "run")).save(0, {"w": np.zeros(3, np.float32)},
                                            {"config": {}}, accepted=True)
  monkeypatch.setenv("SELFIMPROVE_JAX_VERIFY", "sometimes")
  code = _call(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "e")])
  err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
  assert code == 2 and len(err) == 1 and "SELFIMPROVE_JAX_VERIFY" in err[0], err


def test_bad_weights_cache_variable_is_one_line(files, monkeypatch, capfd):
  """SELFIMPROVE_JAX_WEIGHTS_CACHE naming a file: one line, before the weights are read."""
  monkeypatch.setenv("SELFIMPROVE_JAX_WEIGHTS_CACHE", files["a_file"])
  assert _call(["generate", "--model", "smollm2-135m-instruct", "--prompt", "hi"]) == 2
  err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and "SELFIMPROVE_JAX_WEIGHTS_CACHE" in err[0], err
