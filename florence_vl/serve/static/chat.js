// The page's chat mode: ask Florence-VL about the image, POST /v1/chat/completions with stream: true, and show
// the answer as its server-sent events arrive. Uses app.js's $, state, headers() and showError().
"use strict";

const chat = { messages: [], imageUrl: null, busy: false };

function setMode(mode) {
  const chatting = mode === "chat";
  $("mode-tasks").setAttribute("aria-selected", String(!chatting));
  $("mode-chat").setAttribute("aria-selected", String(chatting));
  $("task-section").hidden = chatting;
  $("result-panel").hidden = chatting;
  $("chat-form").hidden = !chatting;
  $("chat-panel").hidden = !chatting;
  document.body.dataset.mode = mode;
  showError("");
  updateChatForm();
}

function updateChatForm() {
  $("chat-send").disabled = chat.busy || !$("chat-input").value.trim();
}

function resetChat() {
  chat.messages = [];
  chat.imageUrl = null;
  $("chat-log").replaceChildren();
  $("chat-status").textContent = "";
  delete document.body.dataset.chat;
}

function addTurn(role, text, imageUrl) {
  $("chat-empty") && $("chat-empty").remove();
  const div = document.createElement("div");
  div.className = `turn ${role}`;
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = "the image asked about";
    div.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("chat-log").appendChild(div);
  return div;
}

async function readEvents(response, onData) {  // SSE: "data: {...}" blocks separated by a blank line
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) onData(line.slice(6));
      }
    }
    if (done) return;
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("chat-input").value.trim();
  if (!question || chat.busy) return;
  if (state.dataUrl !== chat.imageUrl && chat.messages.length) resetChat();  // another image: a new conversation
  const content = [{ type: "text", text: question }];
  const firstWithImage = !chat.messages.length && state.dataUrl;
  if (firstWithImage) {
    content.push({ type: "image_url", image_url: { url: state.dataUrl } });
    chat.imageUrl = state.dataUrl;
  }
  chat.messages.push({ role: "user", content });
  addTurn("user", question, firstWithImage ? state.dataUrl : null);
  const bubble = addTurn("assistant", "");
  bubble.classList.add("streaming");
  const text = bubble.querySelector(".text");
  $("chat-input").value = "";
  chat.busy = true;
  updateChatForm();
  showError("");
  delete document.body.dataset.chat;
  $("chat-status").textContent = "thinking…";
  const started = performance.now();
  let chunks = 0, finish = null, usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ messages: chat.messages, stream: true, stream_options: { include_usage: true },
                             max_tokens: Number($("chat-tokens").value) || undefined }) });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    }
    await readEvents(response, (data) => {
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      const choice = (event.choices || [])[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        text.textContent += choice.delta.content;
        chunks += 1;
        $("chat-status").textContent = "answering…";
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    chat.messages.push({ role: "assistant", content: text.textContent });
    const tokens = usage ? ` · ${usage.completion_tokens} tokens` : "";
    $("chat-status").textContent = `${finish || "done"} in ${Math.round(performance.now() - started)} ms${tokens}`;
    document.body.dataset.chatChunks = String(chunks);
    document.body.dataset.chat = "done";
  } catch (error) {
    chat.messages.pop();  // the question was not answered; ask again
    bubble.remove();
    showError(error.message);
    $("chat-status").textContent = "";
    document.body.dataset.chat = "error";
  } finally {
    bubble.classList.remove("streaming");
    chat.busy = false;
    updateChatForm();
  }
}

async function initChat() {
  $("mode-tasks").addEventListener("click", () => setMode("tasks"));
  $("mode-chat").addEventListener("click", () => setMode("chat"));
  $("chat-form").addEventListener("submit", ask);
  $("chat-reset").addEventListener("click", resetChat);
  $("chat-input").addEventListener("input", updateChatForm);
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  try {
    const health = await (await fetch("/health")).json();
    if (health.chat) {
      $("mode-chat").disabled = false;
      $("mode-chat").title = `chat with ${health.chat.model}`;
      $("chat-tokens").max = health.chat.limits.max_tokens;
      $("chat-tokens").value = Math.min(128, health.chat.limits.max_tokens);
    }
  } catch (error) { /* app.js reports an unreachable server */ }
  document.body.dataset.chatReady = "true";
}

initChat();
