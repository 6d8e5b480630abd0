"""Greedy text: `selfimprove-jax generate --model gemma3-270m --raw --temperature 0` vs
transformers' generate (Gemma3ForCausalLM, fp32) on the same GGUF, on prompts no test
names. Run: python benchmarks/gemma3_greedy_check.py (prints one JSON line per prompt)."""
import json, os, subprocess, sys, time
import torch, transformers
PROMPTS = ["The three primary colors are", "In 1969, the Apollo 11 mission",
           "To make a cup of tea, first"]
N = 24
t = time.time()
cmd = [sys.executable, "-m", "selfimprove_jax.cli", "generate", "--model", "gemma3-270m", "--raw",
       "--temperature", "0", "--max_new_tokens", str(N), "--json"]
for p in PROMPTS: cmd += ["--prompt", p]
out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
assert out.returncode == 0, out.stderr[-2000:]
ours = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
print("ours", round(time.time() - t, 1), "s")
from selfimprove_jax.weights import tokenizer as tl
path = tl.gemma3_gguf_path()
ref = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
same = 0
for p, o in zip(PROMPTS, ours):
  ids = tok(p, return_tensors="pt")
  with torch.no_grad():
    g = ref.generate(**ids, do_sample=False, max_new_tokens=N, eos_token_id=[1, 106], pad_token_id=0)
  theirs = tok.decode(g[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
  same += theirs == o["text"]
  print(json.dumps({"prompt": p, "ours": o["text"], "transformers": theirs, "same": theirs == o["text"]}))
print(f"{same}/{len(PROMPTS)} identical")
