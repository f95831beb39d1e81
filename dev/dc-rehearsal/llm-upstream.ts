#!/usr/bin/env node
// The LLM's place in the rehearsal: the OpenAI-compatible stub (dev/llm-stub),
// one per datacenter, answering with the usage it counts, as a real LLM would.
//   PORT=8083 node dist/dev/dc-rehearsal/llm-upstream.js
import { startLlmStub } from '../llm-stub/index.js';

const stub = await startLlmStub({ port: Number(process.env.PORT ?? 8083), host: process.env.HOST ?? '127.0.0.1' });
process.on('SIGTERM', () => void stub.close().then(() => process.exit(0)));
