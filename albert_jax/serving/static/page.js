// The model page: sends the prompt to POST /v1/inference/{model} with the API key and
// draws the ranked completions as "sequence (score)" lines with score bars.
(function () {
  const model = JSON.parse(document.body.dataset.model);
  const form = document.getElementById("form");
  const keyField = document.getElementById("api-key");
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const runtime = document.getElementById("runtime");
  keyField.value = sessionStorage.getItem("albert_jax_key") || "";

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const key = keyField.value.trim();
    sessionStorage.setItem("albert_jax_key", key);
    status.textContent = "Computing...";
    status.className = "status";
    results.replaceChildren();
    runtime.textContent = "";
    const headers = { "Content-Type": "application/json" };
    if (key) headers["Authorization"] = "Bearer " + key;
    let answer;
    try {
      const response = await fetch("/v1/inference/" + encodeURIComponent(model), {
        method: "POST", headers: headers,
        body: JSON.stringify({ input: document.getElementById("prompt").value }),
      });
      answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
    } catch (err) {
      status.textContent = String(err.message || err);
      status.className = "status error";
      return;
    }
    status.textContent = "";
    const best = Math.max(...answer.results.map(r => r.score), 1e-12);
    for (const r of answer.results) {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (100 * r.score / best).toFixed(1) + "%";
      li.appendChild(bar);
      li.appendChild(document.createTextNode(r.sequence + " (" + r.score.toFixed(2) + ")"));
      results.appendChild(li);
    }
    const s = answer.inference_status;
    runtime.textContent = "Compute time: " + s.runtime_ms.toFixed(2) +
      " ms, " + s.tokens_input + " tokens, cost $" + s.cost.toPrecision(3);
  });
})();
