// A Virtool 42.x workflow pod, as its runtime (@virtool/workflow, virtool/virtool
// packages/workflow) drives the jobs API, for the end-to-end tests: Node's own fetch
// (undici, as the runtime uses), the same requests, headers and bodies, the same
// cadences and the same reactions to each answer. Only the workflow is ours: a few
// steps that wait, reading no samples.
//
//   claim   POST {base}/jobs/claim?workflow=W, JSON body, no credentials; every 2 s
//           while the answer is 404; any other status but 200 ends the pod (exit 1);
//           a transport failure is retried at the next poll; VT_TIMEOUT ends the poll
//   run     GET /jobs/{id} once; pings start 100 ms later, then every 5 s, PUT with
//           no body and no Content-Type, never retried; a 401 to a ping cancels the
//           run; five failed pings in a row stop the pings; before each step
//           POST /jobs/{id}/steps/{step}/start with body {} (retried 5 times, 5 s
//           apart, on transport failures only; any error status fails the run)
//   finish  POST /jobs/{id}/finish with no body, after a run that succeeded
//   exit    0 (succeeded, failed or cancelled: failure is the API's to record),
//           1 for a pod that could not claim or prepare, 124 on SIGTERM
//
// Environment: VT_JOBS_API_URL, VT_WORKFLOW, VT_MEM, VT_PROC, VT_IMAGE, VT_TIMEOUT as the
// runtime reads them; V42_STEPS, a JSON list of {id, name, description, seconds}; V42_LOG,
// a file where every exchange is written as one JSON line, and each event of the run.

import { appendFileSync } from "node:fs";
import { hostname } from "node:os";

const CLAIM_POLL_MS = 2_000;
const PING_STAGGER_MS = 100;
const PING_INTERVAL_MS = 5_000;
const MAX_PING_FAILURES = 5;
const MAX_RETRIES = 5;
const RETRY_DELAY_MS = 5_000;
const REQUEST_BUDGET_MS = 600_000;
const WORKFLOWS = ["create_sample", "create_subtraction", "nuvs", "pathoscope"];

const env = process.env;
const base = (env.VT_JOBS_API_URL ?? "").replace(/\/+$/, "");
const workflow = env.VT_WORKFLOW;
const steps = JSON.parse(env.V42_STEPS ?? "[]");
const logPath = env.V42_LOG;

if (!base || !WORKFLOWS.includes(workflow)) {
	console.error("invalid workflow run configuration");
	process.exit(1);
}

function record(entry) {
	if (logPath) {
		appendFileSync(logPath, `${JSON.stringify({ at: new Date().toISOString(), ...entry })}\n`);
	}
}

class ApiError extends Error {
	constructor(message, { status, transport = false } = {}) {
		super(message);
		this.status = status;
		this.transport = transport;
	}
}

// AbortSignal.any, which Node has from 20.3 on (Debian 12's Node is 18: a plain stand-in).
function anySignal(signals) {
	if (AbortSignal.any) return AbortSignal.any(signals);
	const controller = new AbortController();
	for (const signal of signals) {
		if (signal.aborted) {
			controller.abort(signal.reason);
			break;
		}
		signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
	}
	return controller.signal;
}

function sleep(ms, signal) {
	if (signal?.aborted) return Promise.resolve();
	return new Promise((resolve) => {
		const done = () => {
			clearTimeout(timer);
			signal?.removeEventListener("abort", done);
			resolve();
		};
		const timer = setTimeout(done, ms);
		signal?.addEventListener("abort", done, { once: true });
	});
}

// One exchange, written to the log as sent and as answered.
async function exchange(method, path, { headers, body, signal, query }) {
	const url = new URL(`${base}${path}`);
	for (const [name, value] of Object.entries(query ?? {})) url.searchParams.set(name, value);
	const entry = { kind: "exchange", method, path: url.pathname + url.search, headers, body: body ?? null };
	let response;
	try {
		response = await fetch(url, { method, headers, body, signal });
	} catch (err) {
		record({ ...entry, error: String(err?.cause?.code ?? err?.name ?? err) });
		throw err;
	}
	const text = await response.text();
	let parsed = null;
	try {
		parsed = JSON.parse(text);
	} catch {}
	record({ ...entry, status: response.status, contentType: response.headers.get("content-type"), answer: parsed ?? text });
	return { status: response.status, ok: response.ok, json: parsed, text };
}

function errorMessage(answer) {
	if (answer.text.trim() === "") return "could not decode response message";
	if (answer.json && typeof answer.json.message === "string") return answer.json.message;
	return answer.json ? JSON.stringify(answer.json) : answer.text;
}

// The claimed job's fields the runtime reads before it trusts the answer.
function checkClaimed(body) {
	const fields = { id: "number", acquired: "boolean", key: "string", state: "string", workflow: "string" };
	for (const [name, type] of Object.entries(fields)) {
		if (typeof body?.[name] !== type) throw new ApiError(`unexpected claim body: ${name}`, { status: 200 });
	}
	if (!Number.isInteger(body.id) || !Array.isArray(body.steps) || typeof body.user?.id !== "number") {
		throw new ApiError("unexpected claim body", { status: 200 });
	}
	for (const name of ["claimedAt", "createdAt"]) {
		if (Number.isNaN(new Date(body[name]).getTime())) throw new ApiError(`unreadable ${name}`, { status: 200 });
	}
}

async function claim(signal) {
	const request = {
		runnerId: `${hostname()}-${process.pid}`,
		mem: Number(env.VT_MEM ?? 4),
		cpu: Number(env.VT_PROC ?? 2),
		image: env.VT_IMAGE ?? "unknown",
		runtimeVersion: "42.12.0",
		workflowVersion: "0.0.0-test",
		steps: steps.map(({ id, name, description }) => ({ id, name, description })),
	};
	while (!signal.aborted) {
		try {
			const answer = await exchange("POST", "/jobs/claim", {
				query: { workflow },
				headers: { accept: "application/json", "content-type": "application/json" },
				body: JSON.stringify(request),
				signal: anySignal([AbortSignal.timeout(REQUEST_BUDGET_MS), signal]),
			});
			if (answer.status === 200) {
				checkClaimed(answer.json);
				record({ kind: "event", event: "claimed", jobId: answer.json.id });
				return answer.json;
			}
			if (answer.status !== 404) {
				throw new ApiError(errorMessage(answer), { status: answer.status });
			}
		} catch (err) {
			if (err instanceof ApiError) throw err;
			if (signal.aborted) break;
		}
		await sleep(CLAIM_POLL_MS, signal);
	}
	return null;
}

function client(jobId, key, runSignal) {
	const authorization = `Basic ${Buffer.from(`job-${jobId}:${key}`).toString("base64")}`;

	async function attempt(method, path, body, signal) {
		const headers = { accept: "application/json", authorization };
		if (body !== undefined) headers["content-type"] = "application/json";
		let answer;
		try {
			answer = await exchange(method, path, {
				headers,
				body: body === undefined ? undefined : JSON.stringify(body),
				signal: anySignal([AbortSignal.timeout(REQUEST_BUDGET_MS), runSignal, ...(signal ? [signal] : [])]),
			});
		} catch (err) {
			if (runSignal.aborted || signal?.aborted) throw err;
			throw new ApiError(`could not reach the jobs API at ${method} ${path}`, { transport: true });
		}
		if (!answer.ok) throw new ApiError(errorMessage(answer), { status: answer.status });
		return answer.json;
	}

	async function request(method, path, { body, retries = MAX_RETRIES, signal } = {}) {
		for (let tries = 0; ; tries++) {
			try {
				return await attempt(method, path, body, signal);
			} catch (err) {
				if (!(err instanceof ApiError && err.transport) || tries >= retries) throw err;
				await sleep(RETRY_DELAY_MS, runSignal);
				if (runSignal.aborted) throw err;
			}
		}
	}

	return {
		getJob: () => request("GET", `/jobs/${jobId}`),
		ping: (signal) => request("PUT", `/jobs/${jobId}/ping`, { retries: 0, signal }),
		startStep: (stepId) => request("POST", `/jobs/${jobId}/steps/${stepId}/start`, { body: {} }),
		finish: () => request("POST", `/jobs/${jobId}/finish`),
	};
}

function signals() {
	const controller = new AbortController();
	const state = { cancelled: false, terminated: false };
	return {
		signal: controller.signal,
		state,
		cancel() {
			state.cancelled = true;
			controller.abort();
		},
		terminate() {
			state.terminated = true;
			controller.abort();
		},
	};
}

function startPings(api, run) {
	const controller = new AbortController();
	const loop = (async () => {
		let failures = 0;
		await sleep(PING_STAGGER_MS, controller.signal);
		while (!controller.signal.aborted) {
			try {
				await api.ping(controller.signal);
				failures = 0;
			} catch (err) {
				if (controller.signal.aborted || run.signal.aborted) return;
				if (err instanceof ApiError && err.status === 401) {
					record({ kind: "event", event: "ping refused", reason: err.message });
					run.cancel();
					return;
				}
				failures += 1;
				if (failures >= MAX_PING_FAILURES) {
					record({ kind: "event", event: "pings given up" });
					return;
				}
			}
			await sleep(PING_INTERVAL_MS, controller.signal);
		}
	})();
	return {
		async stop() {
			controller.abort();
			await loop;
		},
	};
}

async function runSteps(api, run) {
	for (const step of steps) {
		if (run.signal.aborted) return run.state.cancelled ? "cancelled" : "failed";
		try {
			await api.startStep(step.id);
		} catch (err) {
			if (run.signal.aborted) return run.state.cancelled ? "cancelled" : "failed";
			record({ kind: "event", event: "step start failed", step: step.id, reason: err.message });
			return "failed";
		}
		record({ kind: "event", event: "step running", step: step.id });
		await sleep(step.seconds * 1000, run.signal);
		if (run.signal.aborted) return run.state.cancelled ? "cancelled" : "failed";
	}
	return "succeeded";
}

async function main() {
	const run = signals();
	process.on("SIGTERM", () => run.terminate());
	const timeout = AbortSignal.timeout(Number(env.VT_TIMEOUT ?? 1000) * 1000);

	let claimed;
	try {
		claimed = await claim(anySignal([run.signal, timeout]));
	} catch (err) {
		record({ kind: "event", event: "claim failed", status: err.status, reason: err.message });
		return 1;
	}
	if (claimed === null) return run.state.terminated ? 124 : 0;

	const api = client(claimed.id, claimed.key, run.signal);
	let job;
	try {
		job = await api.getJob();
	} catch (err) {
		record({ kind: "event", event: "prepare failed", reason: err.message });
		return run.state.terminated ? 124 : 1;
	}
	record({ kind: "event", event: "prepared", args: job.args });

	const pings = startPings(api, run);
	let outcome;
	try {
		outcome = await runSteps(api, run);
	} finally {
		await pings.stop();
	}
	record({ kind: "event", event: "outcome", outcome });
	if (outcome === "succeeded") {
		try {
			await api.finish();
			record({ kind: "event", event: "finished" });
		} catch (err) {
			record({ kind: "event", event: "finish failed", reason: err.message });
		}
		return 0;
	}
	return run.state.terminated ? 124 : 0;
}

process.exit(await main());
