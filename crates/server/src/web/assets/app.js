// Hodei Jobs dashboard: live updates for server-rendered pages. Loaded as a file (the
// Content-Security-Policy allows no inline script). Everything a job printed is put in the page
// as text (textContent), never as markup.
'use strict';

(function () {
  const POLL_MS = 2000;

  // Regions marked data-refresh re-fetch their own HTML (rendered and escaped by the server)
  // and replace themselves when it changed. A region marked data-final stops.
  function keepFresh(region) {
    let last = null;
    const url = region.dataset.refresh;
    const id = region.id;
    async function tick() {
      const current = document.getElementById(id);
      if (!current || current.dataset.final === '1') return;
      try {
        const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
        if (response.status === 401) {
          window.location.assign('/login');
          return;
        }
        if (response.ok) {
          const html = await response.text();
          if (html !== last) {
            last = html;
            const fresh = new DOMParser().parseFromString(html, 'text/html').getElementById(id);
            if (fresh) {
              // Keep the keyboard focus on the same control across the swap.
              const focused = document.activeElement && document.activeElement.id;
              current.replaceWith(document.adoptNode(fresh));
              if (focused && !document.getElementById(focused)) {
                // The control is gone (a job that ended has no cancel button).
              } else if (focused) {
                document.getElementById(focused).focus();
              }
              if (fresh.dataset.final === '1') return;
            }
          }
        }
      } catch (e) {
        // The server is restarting or the network is down: try again at the next tick.
      }
      setTimeout(tick, POLL_MS);
    }
    setTimeout(tick, POLL_MS);
  }

  // ANSI "select graphic rendition" sequences become classes; every other escape sequence is
  // dropped, so colour codes never show as garbage.
  const ESCAPES = /\x1b\[([0-9;?]*)([A-Za-z])/g;

  function appendText(target, text) {
    let classes = { fg: null, bold: false };
    let at = 0;
    let match;
    ESCAPES.lastIndex = 0;
    while ((match = ESCAPES.exec(text)) !== null) {
      piece(target, text.slice(at, match.index), classes);
      at = ESCAPES.lastIndex;
      if (match[2] === 'm') classes = sgr(match[1], classes);
    }
    piece(target, text.slice(at), classes);
  }

  function sgr(params, classes) {
    const next = { fg: classes.fg, bold: classes.bold };
    const codes = params === '' ? [0] : params.split(';').map(Number);
    for (const code of codes) {
      if (code === 0) {
        next.fg = null;
        next.bold = false;
      } else if (code === 1) next.bold = true;
      else if (code === 22) next.bold = false;
      else if (code === 39) next.fg = null;
      else if (code >= 30 && code <= 37) next.fg = 'c' + (code - 30);
      else if (code >= 90 && code <= 97) next.fg = 'c' + (code - 90 + 8);
    }
    return next;
  }

  function piece(target, text, classes) {
    if (text === '') return;
    // Other control characters (a stray ESC, a bell) are shown as nothing rather than boxes.
    const clean = text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
    if (!classes.fg && !classes.bold) {
      target.appendChild(document.createTextNode(clean));
      return;
    }
    const span = document.createElement('span');
    if (classes.fg) span.classList.add(classes.fg);
    if (classes.bold) span.classList.add('b');
    span.textContent = clean;
    target.appendChild(span);
  }

  // The log: history and then live lines over server-sent events, in sequence order, each line
  // once. The browser reconnects by itself after a dropped connection, sending the last
  // sequence it saw (Last-Event-ID), and the server continues after it.
  function followLog(box) {
    const status = document.getElementById('log-status');
    const followBox = document.getElementById('log-follow');
    const started = performance.now();
    let next = 1;
    let count = 0;
    let stderr = 0;

    function show(text) {
      status.textContent = text;
    }

    // Each batch becomes one chunk that the browser lays out only while it is on screen
    // (content-visibility), so a log of 100,000 lines costs what is visible, not all of it.
    let scrollPending = false;
    let ownScroll = false;
    function append(batch) {
      const chunk = document.createElement('div');
      chunk.className = 'chunk';
      let added = 0;
      for (const [sequence, stream, text] of batch) {
        if (sequence < next) continue; // already shown
        const line = document.createElement('div');
        line.className = stream === 2 ? 'l err' : 'l out';
        line.dataset.n = String(sequence);
        appendText(line, text);
        chunk.appendChild(line);
        next = sequence + 1;
        count += 1;
        added += 1;
        if (stream === 2) stderr += 1;
      }
      if (added === 0) return;
      // A first guess of the chunk's height until it has been rendered once (CSSOM, which
      // the Content-Security-Policy allows, unlike style attributes).
      chunk.style.containIntrinsicSize = `auto ${added * 18}px`;
      if (!box.dataset.firstLineMs) {
        box.dataset.firstLineMs = String(Math.round(performance.now() - started));
      }
      box.appendChild(chunk);
      box.dataset.next = String(next);
      box.dataset.count = String(count);
      show(`${count} lines (${stderr} on stderr), following…`);
      if (followBox.checked && !scrollPending) {
        scrollPending = true;
        requestAnimationFrame(() => {
          scrollPending = false;
          ownScroll = true;
          box.scrollTop = box.scrollHeight;
        });
      }
    }

    const source = new EventSource(`${box.dataset.stream}?from=${next}`);
    source.addEventListener('lines', (event) => append(JSON.parse(event.data)));
    source.addEventListener('end', (event) => {
      source.close();
      box.dataset.endMs = String(Math.round(performance.now() - started));
      box.dataset.ended = event.data;
      show(`${count} lines (${stderr} on stderr); the job ended: ${event.data.replace('_', ' ')}`);
    });
    source.addEventListener('refused', (event) => {
      source.close();
      show(`Stopped: ${event.data}`);
    });
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) {
        show(`${count} lines; the log stream was refused (signed out?). Reload to retry.`);
      } else {
        show(`${count} lines; connection lost, reconnecting…`);
      }
    });
    // Scrolling up stops following; scrolling back to the bottom resumes it.
    box.addEventListener('scroll', () => {
      if (ownScroll) {
        ownScroll = false;
        return;
      }
      followBox.checked = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
    }, { passive: true });
  }

  document.querySelectorAll('[data-refresh]').forEach(keepFresh);
  const log = document.getElementById('log');
  if (log) followLog(log);
})();
