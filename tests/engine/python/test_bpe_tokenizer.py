"""Byte-level BPE from tokenizer.json against the `tokenizers` package.

A byte-level BPE is trained here with `tokenizers` (GPT-2 pre-tokenizer, the
Llama 3 Split regex, the Qwen2 regex with an NFC normalizer), saved as
tokenizer.json, and sinkscope must encode every text exactly as the package
does (`encode(text, add_special_tokens=False).ids`).
"""

import pytest

from conftest import in_ci, need, require_shared, shared_path, sinkscope_run, sinkscope_run_error, sinkscope_run_lines

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN = """\
The quick brown fox jumps over the lazy dog. I'm sure they'll say it's DONE, we've seen it.
Der schnelle braune Fuchs springt über den faulen Hund. Äpfel, Öl und Übermut — straße.
Le cœur a ses raisons que la raison ne connaît point. Où est l'hôtel? C'était déjà là.
Съешь же ещё этих мягких французских булок, да выпей чаю. Привет, мир!
Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Γειά σου Κόσμε.
我能吞下玻璃而不伤身体。你好，世界！今天天气很好。
いろはにほへと ちりぬるを。こんにちは世界、カタカナもある。
다람쥐 헌 쳇바퀴에 타고파. 안녕하세요 세계!
صِف خَلقَ خَودِ كَمِثلِ الشَمسِ إِذ بَزَغَت. مرحبا بالعالم
ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम
เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน
Emoji: 🙂 😀😃 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️ ✅ 🚀 (multiple emojis concatenated)
Numbers 1234567 3.14159 1,000,000 2026-12-01 0x1F600 and code: for (int i = 0; i < n; ++i) { x += y; }
"""

TEXTS = [
    "Hello world",
    " Hello world",
    "Hello, world! I'm here; they'll come. WE'VE DONE IT, DON'T YOU'D?",
    "ied 4 ½ months",
    "Äpfel und Öl, naïve café, Straße",
    "Съешь же ещё этих мягких французских булок",
    "我能吞下玻璃而不伤身体。こんにちは、世界！다람쥐 헌 쳇바퀴",
    "مرحبا بالعالم हिन्दी भाषा เป็นมนุษย์",
    "🙂😀 👍🏽👨‍👩‍👧‍👦🏳️‍🌈🇫🇷 ❤️✅ 🚀🚀🚀",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs\t",
    "\n\n\nnew\nlines\n\n  \n \n",
    "windows\r\nline\r\n\r\nendings\r\n",
    "non\u00a0breaking\u00a0\u00a0spaces and\u3000ideographic\u2003em",
    "digits 1 12 123 1234 12345 123456789 3.14159 1,000,000",
    "a<|endoftext|>b <|endoftext|> <|endoftext|><|endoftext|>c",
    "mixed: x=1;y=[1,2,3]; print(f'{x!r}') # comment /* c */ -> => !== ...",
    "e\u0301 cafe\u0301 decomposed (NFC matters), Å vs A\u030a",
    "",
    " ",
    "\t",
    "\n",
    TRAIN,
]


def build(tmp_path, variant):
    tokenizers = need("tokenizers")
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if variant == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif variant == "llama3":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:  # qwen2
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=1,
                                  special_tokens=["<|endoftext|>", "<|begin_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = [TRAIN] * 3
    # Real text widens the merges; optional on a developer machine only.
    rel = "corpora/tinyshakespeare.txt"
    shakespeare = require_shared(rel) if in_ci() else shared_path(rel)
    if shakespeare:
        with open(shakespeare, encoding="utf-8") as f:
            corpus.append(f.read(200_000))
    tok.train_from_iterator(corpus, trainer=trainer)
    path = tmp_path / f"{variant}" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return tok, str(path)


@pytest.mark.parametrize("variant", ["gpt2", "llama3", "qwen2"])
def test_bpe_matches_tokenizers(tmp_path, variant):
    tok, path = build(tmp_path, variant)
    files = []
    for i, text in enumerate(TEXTS):
        f = tmp_path / f"text{i}.txt"
        f.write_bytes(text.encode("utf-8"))
        files += ["--file", str(f)]
    results = sinkscope_run_lines("tokenize", "--tokenizer", path, *files)
    assert len(results) == len(TEXTS)
    mismatches = []
    for text, got in zip(TEXTS, results):
        want = tok.encode(text, add_special_tokens=False).ids
        assert got["kind"] == "bpe"
        assert got["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)
        if got["ids"] != want:
            mismatches.append((text, want, got["ids"]))
    assert not mismatches, f"{len(mismatches)} of {len(TEXTS)} texts differ: {mismatches[:3]}"


def test_bpe_matches_tokenizers_on_shakespeare(tmp_path):
    corpus = require_shared("corpora/tinyshakespeare.txt")
    tok, path = build(tmp_path, "llama3")
    with open(corpus, encoding="utf-8") as f:
        want = tok.encode(f.read(), add_special_tokens=False).ids
    got = sinkscope_run("tokenize", "--tokenizer", path, "--file", corpus)["ids"]
    assert len(got) == len(want)
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert first is None, f"first difference at token {first}"


def test_bpe_refuses_unsupported(tmp_path):
    need("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    p = tmp_path / "tokenizer.json"
    tok.save(str(p))
    err = sinkscope_run_error("tokenize", "--tokenizer", str(p), "--text", "a")
    assert "model type WordLevel is not supported" in err and str(p) in err
