() => {
  // The two chat panes scroll together (proportionally), so an answer and its counterpart stay side by side.
  const link = () => {
    const a = document.querySelector("#bip-chat-original .bubble-wrap");
    const b = document.querySelector("#bip-chat-pruned .bubble-wrap");
    if (!a || !b || a.dataset.bipLinked) return;
    let busy = false;
    const follow = (src, dst) => () => {
      if (busy) return;
      busy = true;
      const range = src.scrollHeight - src.clientHeight;
      dst.scrollTop = range > 0 ? (src.scrollTop / range) * (dst.scrollHeight - dst.clientHeight) : 0;
      requestAnimationFrame(() => { busy = false; });
    };
    a.addEventListener("scroll", follow(a, b));
    b.addEventListener("scroll", follow(b, a));
    a.dataset.bipLinked = b.dataset.bipLinked = "1";
  };
  setInterval(link, 1000);  // the panes are re-created when a tab renders them
}
