"""The guard's metrics: pure functions over plain data.

- ``retrieval``: P@k, R@k, hit@k, MRR, nDCG@k, MAP by document id (trec_eval conventions).
- ``answers``: SQuAD exact match and token F1, abstention detection and classification.
- ``tools``: tool selection and argument correctness with BFCL semantics.
- ``ragas_nonllm``: ragas' metrics that need no LLM (imports ragas; import it only when needed).
- ``stats``: bootstrap confidence intervals and the paired regression test.

Undefined values are ``None`` (left out of means and counted), never 0 or NaN.
"""
