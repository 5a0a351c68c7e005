"""The jobs the client tests run: one or more per job type, on the planted
fixture (ground truth in planted.py) and, when shared/ has them, stories260K
and tinyshakespeare. Submitted together (two workers), awaited once per
session; each test reads the results it needs."""
from __future__ import annotations

from planted import ordinary

# Sequences with planted spike tokens: BOS (id 1) at 0, and id 5 / 9 inside.
SEQ_A = ordinary(24, 0)
SEQ_A[8] = 5
SEQ_B = ordinary(24, 3)
SEQ_B[12] = 9
# A delimiter id for the self-attention profile (12 never occurs in ordinary()).
SEQ_D = ordinary(20, 1)
SEQ_D[5] = SEQ_D[11] = 12
# Corpus for evaluations: chunks of 16 starting with BOS, a spike token inside.
CORPUS = []
for c in range(6):
    chunk = [1] + [10 + (c * 13 + i * 7) % 50 for i in range(1, 16)]
    chunk[6] = 5
    CORPUS += chunk
STORIES_IDS = [1, 461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264,
               283, 452, 288, 13]

# bytelm-demo (shared/): BOS (256) then one id per byte.
BYTELM_IDS = [256, 70, 105, 114, 115, 116]  # BOS "First"

# shared/README.md's bytelm-demo sentence (BOS + its UTF-8 bytes, 81 ids),
# with published float64 numbers: perplexity 3.326, max |h| per block.
BYTELM_README_IDS = [256] + list(
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.".encode())
BYTELM_MAX_ABS = [5.15, 85.81, 93.06, 111.42, 119.74, 125.23, 129.98, 151.43, 165.58, 171.87,
                  184.93, 193.16]
# The profile's chunks of CORPUS (chunk_length 16) as sequences, for the
# separate jobs a profile must equal.
PROFILE_CHUNK = 16
PROFILE_CHUNKS = [CORPUS[i:i + PROFILE_CHUNK] for i in range(0, len(CORPUS), PROFILE_CHUNK)]

# name -> (job type, shared model it needs (None, "stories260K", "bytelm-demo"),
#          submit(client) -> Job)
SPECS = {
    "scan": ("scan", None, lambda c: c.scan("planted", [SEQ_A, SEQ_B])),
    "sinks": ("sinks", None, lambda c: c.sinks("planted", [ordinary(40, 1), ordinary(40, 2)],
                                                window=32)),
    "first_token_probe": ("first_token_probe", None, lambda c: c.first_token_probe(
        "planted", token_ids=[1, 5, 9, 10, 11, 12, 13], batch_size=4)),
    "spike_similarity": ("spike_similarity", None,
                         lambda c: c.spike_similarity("planted", [SEQ_A, SEQ_B])),
    "self_attention_profile": ("self_attention_profile", None, lambda c: c.self_attention_profile(
        "planted", [SEQ_D], layers=[0, 1, 2], delimiter_ids=[12])),
    "perplexity": ("perplexity", None, lambda c: c.perplexity(
        "planted", [ordinary(50, 0), ordinary(50, 4)], chunk_length=16)),
    "constant_substitution": ("constant_substitution", None, lambda c: c.constant_substitution(
        "planted", [CORPUS], chunk_length=16)),
    "constant_substitution_zero": ("constant_substitution", None, lambda c: c.constant_substitution(
        "planted", [CORPUS], chunk_length=16,
        interventions=[{"substitution": {"mode": "zero"}}])),
    "sink_ablation": ("sink_ablation", None, lambda c: c.sink_ablation(
        "planted", [CORPUS], chunk_length=16)),
    "scan_stories": ("scan", "stories260K", lambda c: c.scan("stories260K", STORIES_IDS)),
    "perplexity_stories": ("perplexity", "stories260K", lambda c: c.perplexity(
        "stories260K", corpus="tinyshakespeare", token_budget=512, chunk_length=128)),
    # Mechanism jobs (used when the proto has them).
    "ffn_quadratic": ("ffn_quadratic", None, lambda c: c.submit("ffn_quadratic", "planted")),
    "silu_regime": ("silu_regime", None, lambda c: c.submit("silu_regime", "planted", [SEQ_A, SEQ_B])),
    "vo_circuit": ("vo_circuit", None, lambda c: c.submit("vo_circuit", "planted",
                                                           token_ids=[1, 5, 10, 11])),
    # vo-circuit where the alignments are not all 0 (on planted, W_O writes
    # nothing on s* = e_0): bytelm-demo's step-up block 2, the whole vocabulary.
    "vo_circuit_bytelm": ("vo_circuit", "bytelm-demo", lambda c: c.submit(
        "vo_circuit", "bytelm-demo", token_ids=BYTELM_IDS, step_up_block=2, vocab_sample=257)),
    # Profile: one pass = the separate perplexity, sinks and scan jobs.
    "profile_planted": ("profile", None, lambda c: c.profile(
        "planted", [CORPUS], chunk_length=PROFILE_CHUNK, sink_window=PROFILE_CHUNK)),
    "profile_part_perplexity": ("perplexity", None, lambda c: c.perplexity(
        "planted", [CORPUS], chunk_length=PROFILE_CHUNK)),
    "profile_part_sinks": ("sinks", None, lambda c: c.sinks(
        "planted", PROFILE_CHUNKS, window=PROFILE_CHUNK)),
    "profile_part_scan": ("scan", None, lambda c: c.scan("planted", PROFILE_CHUNKS)),
    "profile_bytelm": ("profile", "bytelm-demo", lambda c: c.profile(
        "bytelm-demo", [BYTELM_README_IDS], chunk_length=128, abs_threshold=50, rel_threshold=20)),
    # A comparison: the planted model, the shared models, a model the
    # catalog lacks (its failed row), in order.
    "profile_compare": ("profile", "bytelm-demo", lambda c: c.profile(
        "planted", [CORPUS], chunk_length=PROFILE_CHUNK, sink_window=PROFILE_CHUNK,
        compare=["planted-sandwich", "bytelm-demo", "no-such-model", "stories260K"])),
    "profile_run": ("profile", None, lambda c: c.profile(
        "planted", [CORPUS], chunk_length=PROFILE_CHUNK, sink_window=PROFILE_CHUNK,
        compare=["planted@*", "nothing@*"])),
    "activations": ("activations", None, lambda c: c.submit(
        "activations", "planted", [SEQ_A], hooks=["blocks.1.hook_resid_post", "blocks.2.attn.hook_pattern"],
        positions=[0, 1, 8])),
}
