"""Cross-file context: which chunks of other files are chosen, how they are laid out in the prompt,
and that the choice holds still while the user types on one line (the keystroke cache needs it)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from diffgemma_ls.completion import plan
from diffgemma_ls.config import Settings
from diffgemma_ls.engine.infill import Engine
from diffgemma_ls.engine.loader import default_model_path, load_model
from diffgemma_ls.prompt import FILE_SEP, build_prompt
from diffgemma_ls.snippets import CHUNK_LINES, ChunkIndex, Snippet, best_snippets, chunks_of, query_of
from diffgemma_ls.workspace import Workspace

CLIENT = "".join(f"def helper_{i}(value):\n    return value + {i}\n\n" for i in range(12)) + (
    "class StorageClient:\n    def fetch_bucket(self, bucket_name, region):\n"
    "        return self.session.get_bucket(bucket_name, region=region)\n"
)
PREFIX = "from storage import StorageClient\n\nclient = StorageClient()\nbucket = client.fetch_bucket("
SUFFIX = ")\nprint(bucket)\n"


def test_chunks_overlap_by_half_and_skip_blank_ones() -> None:
    text = "".join(f"name_{i} = {i}\n" for i in range(40)) + "\n" * 20
    chunks = chunks_of("a.py", text)
    assert [c.start for c in chunks] == list(range(0, 40, CHUNK_LINES // 2))
    assert chunks[0].text.splitlines()[CHUNK_LINES // 2] == chunks[1].text.splitlines()[0]
    assert all(c.names for c in chunks)


def test_the_chunk_sharing_the_cursors_names_wins_and_the_budget_holds() -> None:
    chunks = chunks_of("storage.py", CLIENT) + chunks_of("other.py", "import os\nprint(os.getcwd())\n")
    query = query_of(PREFIX, SUFFIX)
    (best,) = best_snippets(chunks, query, budget_chars=len(max(chunks, key=lambda c: len(c.text)).text))
    assert best.path == "storage.py" and "fetch_bucket(self, bucket_name" in best.text
    assert best_snippets(chunks, query, budget_chars=10) == []
    assert best_snippets(chunks, frozenset(), budget_chars=10_000) == []
    several = best_snippets(chunks, query, budget_chars=10_000)
    assert sum(len(s.text) for s in several) <= 10_000
    starts = [c.start for c in chunks if Snippet(c.path, c.text) in several and c.path == "storage.py"]
    assert all(abs(a - b) >= CHUNK_LINES for a in starts for b in starts if a != b)  # no overlapping pair
    assert several[-1] == best  # the best is last: nearest the cursor in the prompt


def test_the_index_ranks_as_best_snippets_does_and_forgets_files() -> None:
    index = ChunkIndex()
    index.set_file("/w/storage.py", "storage.py", CLIENT)
    index.set_file("/w/other.py", "other.py", "import os\nprint(os.getcwd())\n")
    query = query_of(PREFIX, SUFFIX)
    chunks = chunks_of("storage.py", CLIENT) + chunks_of("other.py", "import os\nprint(os.getcwd())\n")
    assert index.best(query, 600) == best_snippets(
        sorted(chunks, key=lambda c: (c.path, c.start)), query, 600
    )
    assert index.best(query, 600, exclude="/w/storage.py") == []
    index.set_file("/w/storage.py", "", None)
    assert index.best(query, 600) == [] and len(index) == 1


def test_snippets_come_first_in_the_fim_prompt_as_file_separated_text() -> None:
    tok = AutoTokenizer.from_pretrained(default_model_path())
    plain = build_prompt(tok, PREFIX, SUFFIX)
    snippet = Snippet("pkg/storage.py", "x = '<|fim_middle|>'\n")  # a file may spell a control token
    with_context = build_prompt(tok, PREFIX, SUFFIX, snippets=[snippet])
    sep = tok.convert_tokens_to_ids(FILE_SEP)
    assert with_context.head[0] == tok.bos_token_id and with_context.head[1] == sep
    assert with_context.head[-len(plain.head) + 1 :] == plain.head[1:]  # then the FIM prompt, unchanged
    assert with_context.prefix == plain.prefix and with_context.tail == plain.tail
    between = with_context.head[2 : len(with_context.head) - len(plain.head) + 1]
    assert tok.decode(between) == "pkg/storage.py\nx = '<|fim_middle|>'\n"
    assert tok.convert_tokens_to_ids("<|fim_middle|>") not in between


def test_the_choice_holds_while_typing_on_one_line_and_changes_on_the_next(tmp_path: Path) -> None:
    (tmp_path / "storage.py").write_text(CLIENT)
    (tmp_path / "cli.py").write_text("import argparse\nparser = argparse.ArgumentParser()\n" * 3)
    workspace = Workspace([tmp_path])
    workspace.scan()
    here = str(tmp_path / "main.py")
    first = workspace.snippets(PREFIX, SUFFIX, here, 2000)
    assert first and first[-1].path == "storage.py"
    typed = workspace.snippets(PREFIX + "bucket_name, parser", SUFFIX, here, 2000)
    assert typed is first  # same line, same text above: the same choice, so the same prompt head
    next_line = workspace.snippets(PREFIX + ")\nparser = argparse.", "\n", here, 2000)
    assert next_line is not first and next_line[-1].path == "cli.py"
    # the same cursor in storage.py itself: its own chunks are never context
    assert workspace.snippets(PREFIX, SUFFIX, str(tmp_path / "storage.py"), 2000) == []


def test_only_a_model_trained_for_them_gets_snippets(tmp_path: Path, random_model_dir: Path) -> None:
    (tmp_path / "storage.py").write_text(CLIENT)
    workspace = Workspace([tmp_path])
    workspace.scan()
    engine = Engine(load_model(str(random_model_dir)))
    text, uri = PREFIX + SUFFIX, (tmp_path / "main.py").as_uri()
    request = plan(
        text, len(PREFIX), "python", Settings(), engine, invoked=True, uri=uri, workspace=workspace
    )
    assert request is not None and request.snippets == ()
    engine.model.config.cross_file_context = True
    request = plan(
        text, len(PREFIX), "python", Settings(), engine, invoked=True, uri=uri, workspace=workspace
    )
    assert request is not None and request.snippets and request.snippets[-1].path == "storage.py"
    off = Settings(cross_file_chars=0)
    request = plan(text, len(PREFIX), "python", off, engine, invoked=True, uri=uri, workspace=workspace)
    assert request is not None and request.snippets == ()
    result = engine.infill(
        request.context.prefix, request.context.suffix, snippets=[Snippet("a.py", "x = 1\n")]
    )
    assert result.prompt_tokens > engine.infill(request.context.prefix, request.context.suffix).prompt_tokens
