// Open WebUI in a real browser against rocmforge (run by compat/webui/run.sh, which starts both
// servers): open the UI, create the admin account when asked, pick the model, send a message,
// watch the reply stream in, check what Open WebUI stored, and save screenshots.
//
// Env: WEBUI_URL, WEBUI_MODEL (the id as /api/tags lists it), WEBUI_SHOTS (folder), CHROMIUM
// (the browser binary), NODE_PATH (where playwright-core is installed).
// Contents are checked by meaning (a non-empty reply that grew while streaming), never by text.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// ES modules ignore NODE_PATH; resolve playwright-core from there through a CommonJS require.
const nodePath = (process.env.NODE_PATH || '').split(':').filter(Boolean)[0];
assert.ok(nodePath, 'NODE_PATH must name the folder that holds playwright-core');
const { chromium } = createRequire(join(nodePath, 'noop.js'))('playwright-core');

const URL = process.env.WEBUI_URL;
const MODEL = process.env.WEBUI_MODEL || 'smollm2:latest';
const SHOTS = process.env.WEBUI_SHOTS || '.';
const ADMIN = { name: 'Rocm Forge', email: 'admin@example.com', password: 'rocmforge-test-pw' };
const PROMPT = 'Write two sentences about the sea.';
const PROMPT2 = 'Now write one sentence about the sky.';

const log = (...a) => console.log('[chat.test]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function shot(page, name) {
  const path = join(SHOTS, name);
  await page.screenshot({ path, fullPage: false });
  log('screenshot', path);
}

/// Click whatever stands between a fresh install and the chat page: the onboarding splash, the
/// admin sign-up form, the release-notes dialog. Returns when the chat input is usable.
async function reachChat(page) {
  const deadline = Date.now() + 90_000;
  let signedUp = false;
  while (Date.now() < deadline) {
    const visible = async (sel) => page.locator(sel).first().isVisible().catch(() => false);
    if (await visible('button[aria-label="Get started"]')) {
      log('onboarding: Get started');
      await shot(page, '00-onboarding.png');
      await page.locator('button[aria-label="Get started"]').first().click();
    } else if (!signedUp && (await visible('input[autocomplete="name"]'))) {
      log('creating the admin account');
      await page.fill('input[autocomplete="name"]', ADMIN.name);
      await page.fill('input[name="email"]', ADMIN.email);
      await page.fill('input[name="password"]', ADMIN.password);
      if (await visible('input[name="confirm-password"]')) {
        await page.fill('input[name="confirm-password"]', ADMIN.password);
      }
      await shot(page, '01-admin-signup.png');
      await page.locator('button[type="submit"]').first().click();
      signedUp = true;
    } else if (!signedUp && (await visible('input[name="password"]'))) {
      log('signing in');
      await page.fill('input[name="email"]', ADMIN.email);
      await page.fill('input[name="password"]', ADMIN.password);
      await page.locator('button[type="submit"]').first().click();
      signedUp = true;
    } else if (await visible('button:has-text("Okay, Let\'s Go!")')) {
      log('dismissing the release notes');
      await page.locator('button:has-text("Okay, Let\'s Go!")').first().click();
    } else if ((await visible('#chat-input')) && !page.url().includes('/auth')) {
      return;
    }
    await sleep(500);
  }
  await shot(page, 'zz-stuck.png');
  throw new Error(`the chat page did not come up (at ${page.url()})`);
}

/// Type a message, send it, and wait until the `n`th assistant reply is complete (the Stop
/// button gone and the text settled). Returns how many different lengths the reply had while it
/// streamed.
async function sendAndWait(page, text, n, shots) {
  await page.locator('#chat-input').click();
  await page.keyboard.type(text);
  if (n === 1) await shot(page, '04-message-typed.png');
  await page.keyboard.press('Enter');
  const reply = page.locator('.chat-assistant #response-content-container').nth(n - 1);
  await reply.waitFor({ state: 'attached', timeout: 60_000 });
  const lengths = new Set();
  let streamShot = !shots.streaming;
  let settled = 0;
  let last = '';
  const t0 = Date.now();
  while (Date.now() - t0 < 180_000) {
    const now = ((await reply.innerText().catch(() => '')) || '').trim();
    if (now) lengths.add(now.length);
    if (now && !streamShot && lengths.size >= 2) {
      await shot(page, shots.streaming);
      streamShot = true;
    }
    const stop = await page.locator('button[aria-label="Stop"]').count();
    settled = stop === 0 && now && now === last ? settled + 1 : 0;
    if (settled >= 5) break;
    last = now;
    await sleep(100);
  }
  assert.ok(settled >= 5, `reply ${n} did not finish in 180 s`);
  if (shots.done) await shot(page, shots.done);
  log(`reply ${n} (${last.length} chars, ${lengths.size} lengths seen while streaming):`, JSON.stringify(last.slice(0, 300)));
  assert.ok(last.length > 0, `no text in reply ${n}`);
  return { text: last, lengths: lengths.size };
}

test(`Open WebUI chats with rocmforge through its ${process.env.WEBUI_CONNECTION || 'ollama'} connection`, { timeout: 600_000 }, async () => {
  const profile = mkdtempSync(join(tmpdir(), 'rocmforge-chromium-'));
  // A fresh profile (launchPersistentContext's user-data-dir); Playwright adds --headless.
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  const consoleErrors = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  try {
    // The page keeps a socket open: wait for the DOM, not for the network to go idle.
    await page.goto(URL, { waitUntil: 'domcontentloaded', timeout: 120_000 });
    await reachChat(page);
    await sleep(1000);
    // The release notes may open once the chat page has loaded.
    const okay = page.locator('button:has-text("Okay, Let\'s Go!")').first();
    if (await okay.isVisible().catch(() => false)) await okay.click();
    await shot(page, '02-chat-page.png');

    // Pick the model (Open WebUI lists what rocmforge's /api/tags says).
    const trigger = page.locator('button[id^="model-selector-"][id$="-button"]').first();
    await trigger.click();
    const option = page.locator(`#model-selector-list [role="option"][data-value="${MODEL}"]`);
    await option.waitFor({ state: 'visible', timeout: 30_000 });
    await shot(page, '03-model-list.png');
    await option.click();
    await page.waitForFunction(
      (m) => (document.querySelector('button[id^="model-selector-"][id$="-button"]')?.getAttribute('aria-label') || '').includes(m),
      MODEL.split(':')[0],
      { timeout: 10_000 },
    );
    log('model selected:', await trigger.getAttribute('aria-label'));

    // First turn: watch the reply stream in.
    const first = await sendAndWait(page, PROMPT, 1, { streaming: '05-streaming.png', done: '06-reply.png' });
    assert.ok(first.lengths >= 2, 'the reply did not grow while streaming (seen only the final text)');
    // Second turn: the whole conversation goes back to rocmforge (its prefix cache serves the
    // part it has seen).
    await sendAndWait(page, PROMPT2, 2, { done: '07-second-reply.png' });

    // What Open WebUI stored for the chat: both assistant messages are done, have no error,
    // and carry the usage numbers taken from rocmforge's final NDJSON line.
    const stored = await page.evaluate(async () => {
      const h = { Authorization: `Bearer ${localStorage.token}` };
      const list = await (await fetch('/api/v1/chats/', { headers: h })).json();
      const id = (Array.isArray(list) ? list : list.items || [])[0]?.id;
      if (!id) return { error: 'no chat stored', list };
      const chat = await (await fetch(`/api/v1/chats/${id}`, { headers: h })).json();
      const msgs = Object.values(chat?.chat?.history?.messages || {});
      msgs.sort((a, b) => (a.timestamp ?? 0) - (b.timestamp ?? 0));
      return { title: chat?.title, msgs: msgs.map((m) => ({ role: m.role, done: m.done, error: m.error, content: m.content, usage: m.usage, model: m.model })) };
    });
    log('stored chat:', JSON.stringify(stored).slice(0, 2000));
    const replies = (stored.msgs || []).filter((m) => m.role === 'assistant');
    assert.equal(replies.length, 2, `expected two assistant messages: ${JSON.stringify(stored)}`);
    for (const a of replies) {
      assert.equal(a.model, MODEL);
      assert.ok(!a.error, `an assistant message has an error: ${JSON.stringify(a.error)}`);
      assert.equal(a.done, true);
      assert.ok((a.content || '').trim().length > 0, 'empty assistant message stored');
      // Ollama connection: eval_count / eval_duration (ns) of the final NDJSON line; OpenAI
      // connection: llama-server's `timings` on the finish chunk (predicted_n, normalised by
      // Open WebUI into output_tokens).
      const u = a.usage || {};
      assert.ok((u.eval_count > 0 && u.eval_duration > 0) || (u.predicted_n > 0 && u.output_tokens > 0), `no usage: ${JSON.stringify(a.usage)}`);
    }
    // Background tasks (title generation: a non-streaming /api/chat) may still run; give the
    // title a moment to appear in the sidebar for the last screenshot.
    await sleep(3000);
    await shot(page, '08-final.png');
    if (consoleErrors.length) log('browser console errors:', consoleErrors.slice(0, 10));
  } catch (e) {
    await shot(page, 'zz-failure.png').catch(() => {});
    throw e;
  } finally {
    await ctx.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
