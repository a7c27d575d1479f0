"use strict";
// Runs the Node.js examples of Clarifai's Collectors guide against a Collectors API on
// 127.0.0.1, with clarifai-nodejs-grpc 11.11.0.
//
// Each example is the guide's code with the placeholders replaced by the constants
// below. It sits in a function whose callback ends with `next()`, so that the examples
// run one after another in the guide's order.
//
// Usage: node guide.js [add] [update] [list] [get] [delete]
//   With no arguments it runs all five examples, in that order. Named examples also run
//   in that order.
// Environment:
//   COLLECTORS_GRPC_PORT  gRPC port of the API on 127.0.0.1 (required)
//   COLLECTORS_API_KEY    API key sent as `authorization: Key <key>` and used as the
//                         collector's post_inputs_key_id (required)
//   GUIDE_COLLECTOR_ID, GUIDE_PRE_QUEUE_WORKFLOW_ID, GUIDE_POST_QUEUE_WORKFLOW_ID,
//   GUIDE_NEW_WORKFLOW_ID  ids for the examples [my-collector, pre-queue, post-queue,
//                         new-workflow]
// Exits with status 1 and a message on stderr when a call fails or returns a status
// other than SUCCESS (10000), and with status 2 on invalid usage.

const path = require("path");

const EXAMPLE_NAMES = ["add", "update", "list", "get", "delete"];

function usageError(message) {
    console.error(`guide.js: ${message}`);
    process.exit(2);
}

function requiredEnv(name) {
    const value = process.env[name];
    if (!value) {
        usageError(`environment variable ${name} is missing`);
    }
    return value;
}

const port = Number(requiredEnv("COLLECTORS_GRPC_PORT"));
if (!Number.isInteger(port) || port < 1 || port > 65535) {
    usageError(`COLLECTORS_GRPC_PORT is invalid: "${process.env.COLLECTORS_GRPC_PORT}"`);
}
const YOUR_API_KEY = requiredEnv("COLLECTORS_API_KEY");
const YOUR_COLLECTOR_ID = process.env.GUIDE_COLLECTOR_ID || "my-collector";
const YOUR_PRE_QUEUE_WORKFLOW_ID = process.env.GUIDE_PRE_QUEUE_WORKFLOW_ID || "pre-queue";
const YOUR_POST_QUEUE_WORKFLOW_ID = process.env.GUIDE_POST_QUEUE_WORKFLOW_ID || "post-queue";
const A_NEW_WORKFLOW_ID = process.env.GUIDE_NEW_WORKFLOW_ID || "new-workflow";
const YOUR_COLLECTOR_DESCRIPTION = "Collects from the general model";
const A_NEW_DESCRIPTION = "A new description";
const YOUR_MODEL_USER_ID = "clarifai";
const YOUR_MODEL_APP_ID = "main";
const YOUR_MODEL_ID = "general-image-recognition";
const YOUR_MODEL_VERSION_ID = "aa7f35c01e0642fda5cf400f543e7c40";

const requested = process.argv.slice(2);
for (const name of requested) {
    if (!EXAMPLE_NAMES.includes(name)) {
        usageError(`unknown example "${name}": expected any of ${EXAMPLE_NAMES.join(", ")}`);
    }
}

// The initialization of the guide's API overview page, except for the channel.
// ClarifaiStub.grpc() and ClarifaiStub.insecureGrpc() connect to Clarifai's hosts. So
// this builds the V2 stub as clarifai-nodejs-grpc's src/index.js does, from the same
// protos, loader options and channel options, but on 127.0.0.1 with insecure
// credentials. @grpc/grpc-js and @grpc/proto-loader are resolved from the package's
// directory, where its src/index.js finds them. Requiring the package itself would
// load the protos a second time, which takes about a second.
const packageDirectory = path.dirname(require.resolve("clarifai-nodejs-grpc"));
const grpc = require(require.resolve("@grpc/grpc-js", {paths: [packageDirectory]}));
const protoLoader = require(require.resolve("@grpc/proto-loader", {paths: [packageDirectory]}));
const PROTO_PATH = path.join(packageDirectory, "..", "proto");
const packageDefinition = protoLoader.loadSync(
    [
        PROTO_PATH + "/clarifai/api/status/status_code.proto",
        PROTO_PATH + "/clarifai/api/status/status.proto",
        PROTO_PATH + "/clarifai/api/resources.proto",
        PROTO_PATH + "/clarifai/api/service_processed.proto",
        PROTO_PATH + "/clarifai/api/utils/matrix.proto",
    ],
    {
        keepCase: true,
        longs: String,
        enums: Number,
        defaults: true,
        oneofs: true
    }
);
const grpcProtoDescriptor = grpc.loadPackageDefinition(packageDefinition);
const MAX_MESSAGE_LENGTH = 1024 * 1024 * 1024; // 1GB, as in the package
const stub = new grpcProtoDescriptor.clarifai.api.V2(
    `127.0.0.1:${port}`,
    grpc.credentials.createInsecure(),
    {
        'grpc.max_receive_message_length': MAX_MESSAGE_LENGTH,
        'grpc.max_send_message_length': MAX_MESSAGE_LENGTH,
    }
);

const metadata = new grpc.Metadata();
metadata.set("authorization", "Key " + YOUR_API_KEY);

// --- Add Collector ---
function addCollector(next) {
    stub.PostCollectors(
        {
            collectors: [
                {
                    id: YOUR_COLLECTOR_ID,
                    description: YOUR_COLLECTOR_DESCRIPTION,
                    pre_queue_workflow_id: YOUR_PRE_QUEUE_WORKFLOW_ID,
                    post_queue_workflow_id: YOUR_POST_QUEUE_WORKFLOW_ID,
                    collector_source: {
                        api_post_model_outputs_collector_source: {
                            model_user_id: YOUR_MODEL_USER_ID,
                            model_app_id: YOUR_MODEL_APP_ID,
                            model_id: YOUR_MODEL_ID,
                            model_version_id: YOUR_MODEL_VERSION_ID,
                            post_inputs_key_id: YOUR_API_KEY
                        }
                    }
                }
            ]
        },
        metadata,
        (err, response) => {
            if (err) {
                throw new Error(err);
            }
            if (response.status.code !== 10000) {
                console.log(response.status);
                throw new Error("Post collectors failed, status: " + response.status.description);
            }
            next();
        }
    );
}

// --- Update Collector ---
function updateCollector(next) {
    stub.PatchCollectors(
        {
            collectors: [
                {
                    id: YOUR_COLLECTOR_ID,
                    description: A_NEW_DESCRIPTION,
                    pre_queue_workflow_id: A_NEW_WORKFLOW_ID,
                }
            ]
        },
        metadata,
        (err, response) => {
            if (err) {
                throw new Error(err);
            }
            if (response.status.code !== 10000) {
                console.log(response.status);
                throw new Error("Patch collectors failed, status: " + response.status.description);
            }
            next();
        }
    );
}

// --- List Collectors ---
function listCollectors(next) {
    stub.ListCollectors(
        {},
        metadata,
        (err, response) => {
            if (err) {
                throw new Error(err);
            }
            if (response.status.code !== 10000) {
                console.log(response.status);
                throw new Error("List collectors failed, status: " + response.status.description);
            }
            for (const collector of response.collectors) {
                console.log(collector);
            }
            next();
        }
    );
}

// --- Get Collector ---
function getCollector(next) {
    stub.GetCollector(
        {
            collector_id: YOUR_COLLECTOR_ID
        },
        metadata,
        (err, response) => {
            if (err) {
                throw new Error(err);
            }
            if (response.status.code !== 10000) {
                console.log(response.status);
                throw new Error("Get collector failed, status: " + response.status.description);
            }
            console.log(response.collector);
            next();
        }
    );
}

// --- Delete Collector ---
function deleteCollectors(next) {
    stub.DeleteCollectors(
        {
            ids: [YOUR_COLLECTOR_ID]
        },
        metadata,
        (err, response) => {
            if (err) {
                throw new Error(err);
            }
            if (response.status.code !== 10000) {
                console.log(response.status);
                throw new Error("Delete collectors failed, status: " + response.status.description);
            }
            next();
        }
    );
}

const EXAMPLES = {
    add: addCollector,
    update: updateCollector,
    list: listCollectors,
    get: getCollector,
    delete: deleteCollectors,
};
const selected = EXAMPLE_NAMES.filter(
    (name) => requested.length === 0 || requested.includes(name)
);

let running = null;
// The examples throw from gRPC callbacks, where no caller can catch the error.
process.on("uncaughtException", (error) => {
    console.error(`guide.js: example "${running}" failed: ${error.message}`);
    process.exit(1);
});

function runFrom(index) {
    if (index === selected.length) {
        stub.close();
        console.log(`guide.js: ran ${selected.join(", ")}`);
        return;
    }
    running = selected[index];
    EXAMPLES[running](() => runFrom(index + 1));
}

runFrom(0);
