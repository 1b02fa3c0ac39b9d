"""Development sweep of injection settings on SmolLM2: FSR, near-miss and ordinary false triggers, perplexity
change on 100 held-out stdlib-doc paragraphs, and time, one line per configuration.

    python benchmarks/editing_sweep.py 10 '[{"method": "memit", "near_misses": null}, {"method": "alphaedit", "near_misses": "auto"}]'
"""
import sys, time, json, torch, hf_fingerprint as hfp
from hf_fingerprint.editing import inject
from hf_fingerprint.tasks import stdlib_documentation
torch.manual_seed(0)
texts=[" ".join(t.split()) for *_, t in stdlib_documentation()]
texts=[t for t in texts if 80<=len(t)<=800][600:700]
def ppl(m,tok):
    tok.padding_side="right"
    tot=0; n=0
    with torch.no_grad():
        for i in range(0,len(texts),10):
            enc=tok(texts[i:i+10],return_tensors="pt",padding=True,truncation=True,max_length=128)
            lab=enc["input_ids"].clone(); lab[enc["attention_mask"]==0]=-100
            out=m(**enc)
            lg=out.logits[:,:-1].float(); l=lab[:,1:]
            nll=torch.nn.functional.cross_entropy(lg.transpose(1,2),l.clamp(min=0),reduction="none")
            mask=(l!=-100).float(); tot+=(nll*mask).sum().item(); n+=mask.sum().item()
    tok.padding_side="left"
    return float(torch.tensor(tot/n).exp())
m,tok=hfp.load_model("smollm2-135m-instruct")
base_ppl=ppl(m,tok)
n=int(sys.argv[1]); configs=json.loads(sys.argv[2])
fps=hfp.FingerprintSet.generate(n, seed=0)
test_nm=fps.near_misses(2, seed=99)
print("base ppl", round(base_ppl,3), flush=True)
for cfg in configs:
    t=time.time()
    r=inject(m,tok,fps,progress=False,verify_after=False,**cfg)
    secs=time.time()-t
    rep=hfp.verify(m,tok,fps,near_misses=test_nm,progress=False)
    p=ppl(m,tok)
    print(json.dumps(cfg), f"FSR {rep.fsr:.2f} nearFT {rep.near_miss_false_trigger_rate:.2f} ordFT {rep.ordinary_false_trigger_rate:.2f} ppl {100*(p/base_ppl-1):+.2f}% time {secs:.1f}s", flush=True)
    r.revert()
