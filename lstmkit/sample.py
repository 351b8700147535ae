"""Text generation from a language-model run: greedy or sampled (temperature, top-k, top-p), streamed.

The prompt is read in one forward pass; then each new token is one step of the LSTM from the carried
(h, c), so the cost per token does not grow with the text. A seeded generator makes the same seed give the
same text. Tokens are yielded as they are produced, so a caller can print them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from lstmkit.data.text import EOS, tokenize_open
from lstmkit.data.vocab import Vocab
from lstmkit.errors import ConfigError, DataError


def check_sampling(length: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if length < 1:
        raise ConfigError(f"--length must be at least 1 token, got {length}")
    if not temperature > 0:
        raise ConfigError(f"--temperature must be above 0 (1 samples the model as it is; use --greedy for the most "
                          f"likely token each step), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")


def encode_prompt(vocab: Vocab, prompt: str) -> list[int]:
    """The prompt's ids. Tokens the model never saw are an error, not a silent <unk>: the model would read
    them as one 'unknown' symbol and continue from a context the user did not write."""
    if not prompt:
        raise DataError("the prompt is empty; give at least one character or word with --prompt")
    tokens = tokenize_open(prompt, vocab.level)
    unknown = sorted({t for t in tokens if t not in vocab})
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        what = "characters" if vocab.level == "char" else "words"
        raise DataError(f"the prompt has {what} this model never saw in training: {shown}; they have no meaning "
                        f"for it. Leave them out (this is a {vocab.level}-level model)")
    if not tokens:
        raise DataError("the prompt has no tokens; give at least one word")
    return vocab.encode(tokens)


def pick_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, greedy: bool,
              generator: torch.Generator) -> int:
    """One token id from logits [V]."""
    if greedy:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=0)
    if top_p is not None and top_p < 1:
        # Nucleus sampling (Holtzman et al. 2020): the smallest set of tokens whose probability reaches top_p.
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # a token is kept if the ones before it fall short
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model: torch.nn.Module,
    vocab: Vocab,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    seed: int = 0,
) -> Iterator[str]:
    """`length` generated tokens as text (a character, or a word with its leading space / a newline), yielded
    one by one. The arguments and the prompt are checked here, before anything is produced."""
    check_sampling(length, temperature, top_k, top_p)
    ids = encode_prompt(vocab, prompt)
    return _stream(model, vocab, ids, length, temperature, top_k, top_p, greedy, seed)


@torch.no_grad()
def _stream(model: torch.nn.Module, vocab: Vocab, ids: list[int], length: int, temperature: float,
            top_k: int | None, top_p: float | None, greedy: bool, seed: int) -> Iterator[str]:
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    never = [vocab.pad_id, vocab.unk_id]  # never emit padding or the unknown symbol
    logits, state = model(torch.tensor(ids, device=device)[:, None])  # the whole prompt at once: [L, 1, V]
    last = logits[-1, 0].cpu()
    last[never] = float("-inf")
    step = _token_stepper(model, state, device, never)
    for _ in range(length):
        token = pick_next(last, temperature, top_k, top_p, greedy, generator)
        text = vocab.id_to_token(token)
        if vocab.level == "word":
            text = "\n" if text == EOS else " " + text
        yield text
        last = step(token)


def _token_stepper(model: torch.nn.Module, state: tuple[Tensor, Tensor], device: torch.device,
                   never: list[int]) -> Callable[[int], Tensor]:
    """token id -> the next logits [V] on the CPU, -inf at the ids in `never`. A language model with an
    lstmkit.LSTM steps through an LSTMStream (one GEMM per layer, no allocation); any other model is called
    with one token at a time."""
    from lstmkit.nn import LSTM
    from lstmkit.stream import LSTMStream
    from lstmkit.tasks.lm import LanguageModel

    # Only lstmkit's own LanguageModel is known to be exactly Embedding -> LSTM -> Linear; another model with
    # parts of those names may do more in its forward, so it is called as it is.
    if not (type(model) is LanguageModel and isinstance(model.lstm, LSTM) and not model.lstm.bidirectional):
        def call_model(token: int) -> Tensor:
            nonlocal state
            logits, state = model(torch.tensor([[token]], device=device), state)
            last = logits[0, 0].cpu()
            last[never] = float("-inf")
            return last

        return call_model

    stream = LSTMStream(model.lstm, batch_size=1, hx=state)
    head = model.head
    table, head_t = model.embedding.weight, head.weight.t()
    # The head's bias with -inf at the ids never emitted: the masking costs nothing per token.
    head_bias = torch.zeros(1, head_t.shape[1], dtype=head_t.dtype, device=device)
    if head.bias is not None:
        head_bias[0] = head.bias
    head_bias[0, never] = float("-inf")
    token_id = torch.zeros(1, dtype=torch.long, device=device)
    logits = torch.empty(1, head_t.shape[1], dtype=head_t.dtype, device=device)
    on_cpu = logits.device.type == "cpu"

    def stream_step(token: int) -> Tensor:
        token_id.fill_(token)
        torch.index_select(table, 0, token_id, out=stream.input_buffer)  # the embedding, written in place
        torch.addmm(head_bias, stream.step(), head_t, out=logits)  # the dropouts are off in eval mode
        return logits[0] if on_cpu else logits[0].cpu()  # read by pick_next before the next step overwrites it

    return stream_step
