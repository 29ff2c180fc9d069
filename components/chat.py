"""Step 4a: chat with the original and the pruned model side by side, streamed in turns.

Each model gets its own history (their earlier answers differ). What is sent is trimmed to the
model's context: the oldest exchanges are left out until the chat template's tokens plus the new
tokens fit, and the info line says so. Token counts are the generated tokens, not re-tokenized text.
"""
import time
from types import SimpleNamespace

import gradio as gr

from bip_core.generation import build_prompt_ids, stream_generate_stats

from . import texts
from .context import attach
from .jobs import check_idle, heavy, precheck, require_model, ui_errors

EMPTY_PROMPT = "Type a prompt first, then press Send."
NO_PRUNED = "*No pruned model yet: prune one in step 3 to compare.*"
WAITING = "…"


def build():
    """The chat panes, prompt row, info line and generation settings (in the Compare tab)."""
    with gr.Accordion("Chat with both models", open=True):
        gr.Markdown(texts.CHAT, elem_classes=["bip-teach", "bip-small"])
        with gr.Row(equal_height=True):
            chat_original = gr.Chatbot(label="Original", height=340, elem_id="bip-chat-original",
                                       placeholder="The original model answers here.", buttons=["copy"],
                                       feedback_options=None)
            chat_pruned = gr.Chatbot(label="Pruned", height=340, elem_id="bip-chat-pruned",
                                     placeholder="The pruned model answers here.", buttons=["copy"],
                                     feedback_options=None)
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(placeholder="Ask both models something, e.g. 'What is the capital of France?'",
                                label="prompt", show_label=False, scale=6, lines=1, max_lines=4,
                                elem_id="bip-prompt")
            send = gr.Button("Send", variant="primary", scale=1, min_width=100, elem_id="bip-send")
            clear = gr.Button("Clear", scale=1, min_width=80)
        chat_info = gr.Markdown("", label="info", elem_classes=["bip-small"], elem_id="bip-chat-info")
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                max_new = gr.Slider(8, 256, value=64, step=8, label="Max new tokens")
                temperature = gr.Slider(0, 1.5, value=0.0, step=0.05, label="Temperature",
                                        info="0 = greedy (deterministic)")
                gen_seed = gr.Number(0, precision=0, label="Seed", minimum=0)
    return SimpleNamespace(chat_original=chat_original, chat_pruned=chat_pruned, prompt=prompt, send=send,
                           clear=clear, chat_info=chat_info, max_new=max_new, temperature=temperature,
                           gen_seed=gen_seed)


def check_chat(session, prompt):
    """Pre-check of Send: a prompt, a model, no job running (a toast; the chats stay as they are)."""
    if not (prompt or "").strip():
        raise gr.Error(EMPTY_PROMPT, print_exception=False)
    precheck(session, "model")


def _text(content) -> str:
    """Plain text of a chat message's content (Gradio hands it back as a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def _plain(history) -> list[dict]:
    return [{"role": m["role"], "content": _text(m.get("content"))} for m in history or []]


def fit_context(tokenizer, messages: list[dict], limit: int | None, max_new: int) -> tuple[list[dict], int]:
    """(the newest messages whose prompt fits in `limit - max_new` tokens, how many earlier exchanges were
    left out). A last prompt that does not fit alone is refused with a message."""
    if not limit:
        return messages, 0
    budget, dropped = limit - max_new, 0
    while True:
        tokens = build_prompt_ids(tokenizer, messages)[0].shape[1]
        if tokens <= budget:
            return messages, dropped
        if len(messages) <= 1:
            raise gr.Error(f"The prompt is {tokens:,} tokens; this model reads {limit:,} tokens, {max_new} of them "
                           f"for the answer, so at most {budget:,}. Shorten the prompt.", print_exception=False)
        messages = messages[2:] if len(messages) > 2 and messages[1]["role"] == "assistant" else messages[1:]
        dropped += 1


def _contexts(session, histories: dict, models: dict, max_new: int) -> tuple[dict, str]:
    """What each model is sent, and a note when earlier turns were left out."""
    contexts, dropped = {}, 0
    for name, model in models.items():
        history = [m for m in histories[name][:-1] if m.get("content") and m["content"] != NO_PRUNED]
        limit = getattr(model.config, "max_position_embeddings", None)
        contexts[name], left_out = fit_context(session.loaded.tokenizer, history, limit, max_new)
        dropped = max(dropped, left_out)
    note = ""
    if dropped:
        limit = getattr(session.loaded.model.config, "max_position_embeddings", 0)
        note = (f" · {dropped} earlier exchange(s) left out to fit the {limit:,}-token context "
                "(press Clear to start afresh)")
    return contexts, note


def _summary(stats: dict, seconds: dict, note: str) -> str:
    parts = [f"{name}: {s['new_tokens']} new tokens ({s['prompt_tokens']:,} sent) in {seconds[name]:.1f} s"
             for name, s in stats.items()]
    return "Done · " + " · ".join(parts) + note


@ui_errors
def chat(session, prompt, max_new, temperature, seed, history_original, history_pruned, request: gr.Request):
    """One prompt through both models (the histories are the chats so far; what is sent is trimmed to the
    model's context), streamed in turns. Yields: original chat, pruned chat, prompt box (emptied), info line
    (starts with 'Done' at the end)."""
    attach(session, request)
    prompt = (prompt or "").strip()
    if not prompt:
        raise gr.Error(EMPTY_PROMPT, print_exception=False)
    loaded = require_model(session)
    check_idle(session)
    histories = {"original": _plain(history_original), "pruned": _plain(history_pruned)}
    models = {"original": loaded.model, **({"pruned": session.pruned} if session.pruned is not None else {})}
    for name, history in histories.items():
        history += [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": WAITING if name in models else NO_PRUNED}]
    contexts, note = _contexts(session, histories, models, int(max_new))
    yield histories["original"], histories["pruned"], "", "Generating ..." + note
    settings = dict(max_new_tokens=int(max_new), temperature=float(temperature), seed=int(seed or 0))
    seconds, stats = {name: 0.0 for name in models}, {}
    with heavy(session, "Generation", None, originals=[loaded.model]):
        streams = {name: stream_generate_stats(model, loaded.tokenizer, contexts[name], **settings)
                   for name, model in models.items()}
        while streams:
            session.check_open()
            for name in list(streams):
                t0 = time.perf_counter()
                try:
                    stats[name] = next(streams[name])
                    histories[name][-1] = {"role": "assistant", "content": stats[name]["text"] or WAITING}
                except StopIteration:
                    del streams[name]
                seconds[name] += time.perf_counter() - t0
            yield histories["original"], histories["pruned"], "", "Generating ..." + note
    for name in models:
        if histories[name][-1]["content"] == WAITING:
            histories[name][-1] = {"role": "assistant", "content": "*(no text: the model stopped at once)*"}
    yield histories["original"], histories["pruned"], "", _summary(stats, seconds, note)


def clear_chat():
    return [], [], ""
