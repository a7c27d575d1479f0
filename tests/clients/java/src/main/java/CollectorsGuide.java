import com.clarifai.credentials.ClarifaiCallCredentials;
import com.clarifai.grpc.api.*;
import com.clarifai.grpc.api.status.*;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Runs the Java examples of Clarifai's Collectors guide against a Collectors API on
 * 127.0.0.1, with com.clarifai:clarifai-grpc 10.3.3.
 *
 * <p>Each example is the guide's code with the placeholders replaced by the constants
 * below. Usage: {@code CollectorsGuide [add] [update] [list] [get] [delete]}. With no
 * arguments it runs all five examples, in that order, and named examples also run in
 * that order.
 *
 * <p>Environment: COLLECTORS_GRPC_PORT is the gRPC port of the API on 127.0.0.1 and
 * COLLECTORS_API_KEY the API key, both required. GUIDE_COLLECTOR_ID,
 * GUIDE_PRE_QUEUE_WORKFLOW_ID, GUIDE_POST_QUEUE_WORKFLOW_ID and GUIDE_NEW_WORKFLOW_ID
 * set the ids [my-collector, pre-queue, post-queue, new-workflow].
 *
 * <p>Exits with status 1 and a message on stderr when a call fails or returns a status
 * other than SUCCESS, and with status 2 on invalid usage.
 */
public class CollectorsGuide {
    private static final List<String> EXAMPLE_NAMES =
            Arrays.asList("add", "update", "list", "get", "delete");

    // Named after the guide's placeholders. main sets the ones read from the environment.
    private static String YOUR_API_KEY;
    private static String YOUR_COLLECTOR_ID;
    private static String YOUR_PRE_QUEUE_WORKFLOW_ID;
    private static String YOUR_POST_QUEUE_WORKFLOW_ID;
    private static String A_NEW_WORKFLOW_ID;
    private static final String YOUR_COLLECTOR_DESCRIPTION = "Collects from the general model";
    private static final String A_NEW_DESCRIPTION = "A new description";
    private static final String YOUR_MODEL_USER_ID = "clarifai";
    private static final String YOUR_MODEL_APP_ID = "main";
    private static final String YOUR_MODEL_ID = "general-image-recognition";
    private static final String YOUR_MODEL_VERSION_ID = "aa7f35c01e0642fda5cf400f543e7c40";

    private static V2Grpc.V2BlockingStub stub;

    public static void main(String[] args) throws InterruptedException {
        for (String name : args) {
            if (!EXAMPLE_NAMES.contains(name)) {
                usageError("unknown example \"" + name + "\": expected any of "
                        + String.join(", ", EXAMPLE_NAMES));
            }
        }
        int port = parsePort(requiredEnv("COLLECTORS_GRPC_PORT"));
        YOUR_API_KEY = requiredEnv("COLLECTORS_API_KEY");
        YOUR_COLLECTOR_ID = envOrDefault("GUIDE_COLLECTOR_ID", "my-collector");
        YOUR_PRE_QUEUE_WORKFLOW_ID = envOrDefault("GUIDE_PRE_QUEUE_WORKFLOW_ID", "pre-queue");
        YOUR_POST_QUEUE_WORKFLOW_ID = envOrDefault("GUIDE_POST_QUEUE_WORKFLOW_ID", "post-queue");
        A_NEW_WORKFLOW_ID = envOrDefault("GUIDE_NEW_WORKFLOW_ID", "new-workflow");

        // The initialization of the guide's API overview page, except for the channel:
        // ClarifaiChannel.INSTANCE.getGrpcChannel() connects to api.clarifai.com.
        ManagedChannel channel =
                ManagedChannelBuilder.forAddress("127.0.0.1", port).usePlaintext().build();
        stub = V2Grpc.newBlockingStub(channel)
                .withCallCredentials(new ClarifaiCallCredentials(YOUR_API_KEY));

        Map<String, Runnable> examples = new LinkedHashMap<>();
        examples.put("add", CollectorsGuide::addCollector);
        examples.put("update", CollectorsGuide::updateCollector);
        examples.put("list", CollectorsGuide::listCollectors);
        examples.put("get", CollectorsGuide::getCollector);
        examples.put("delete", CollectorsGuide::deleteCollectors);

        List<String> selected = new ArrayList<>();
        for (String name : EXAMPLE_NAMES) {
            if (args.length == 0 || Arrays.asList(args).contains(name)) {
                selected.add(name);
            }
        }
        int exitStatus = 0;
        for (String name : selected) {
            try {
                examples.get(name).run();
            } catch (RuntimeException e) {
                // A failed call throws StatusRuntimeException, and the examples throw
                // RuntimeException for a status other than SUCCESS.
                System.err.println(
                        "CollectorsGuide: example \"" + name + "\" failed: " + e.getMessage());
                exitStatus = 1;
                break;
            }
        }
        channel.shutdown().awaitTermination(10, TimeUnit.SECONDS);
        if (exitStatus == 0) {
            System.out.println("CollectorsGuide: ran " + String.join(", ", selected));
        }
        System.exit(exitStatus);
    }

    // --- Add Collector ---
    static void addCollector() {
        MultiCollectorResponse postCollectorsResponse = stub.postCollectors(
                PostCollectorsRequest.newBuilder()
                        .addCollectors(
                                Collector.newBuilder()
                                        .setId(YOUR_COLLECTOR_ID)
                                        .setDescription(YOUR_COLLECTOR_DESCRIPTION)
                                        .setPreQueueWorkflowId(YOUR_PRE_QUEUE_WORKFLOW_ID)
                                        .setPostQueueWorkflowId(YOUR_POST_QUEUE_WORKFLOW_ID)
                                        .setCollectorSource(
                                                CollectorSource.newBuilder()
                                                        .setApiPostModelOutputsCollectorSource(
                                                                APIPostModelOutputsCollectorSource.newBuilder()
                                                                        .setModelUserId(YOUR_MODEL_USER_ID)
                                                                        .setModelAppId(YOUR_MODEL_APP_ID)
                                                                        .setModelId(YOUR_MODEL_ID)
                                                                        .setModelVersionId(YOUR_MODEL_VERSION_ID)
                                                                        .setPostInputsKeyId(YOUR_API_KEY)
                                                        )
                                        )
                        )
                        .build()
        );
        if (postCollectorsResponse.getStatus().getCode() != StatusCode.SUCCESS) {
            throw new RuntimeException("Post collectors failed, status: " + postCollectorsResponse.getStatus());
        }
    }

    // --- Update Collector ---
    static void updateCollector() {
        MultiCollectorResponse patchCollectorsResponse = stub.patchCollectors(
                PatchCollectorsRequest.newBuilder()
                        .addCollectors(
                                Collector.newBuilder()
                                        .setId(YOUR_COLLECTOR_ID)
                                        .setDescription(A_NEW_DESCRIPTION)
                                        .setPreQueueWorkflowId(A_NEW_WORKFLOW_ID)
                        )
                        .build()
        );
        if (patchCollectorsResponse.getStatus().getCode() != StatusCode.SUCCESS) {
            throw new RuntimeException("Patch collectors failed, status: " + patchCollectorsResponse.getStatus());
        }
    }

    // --- List Collectors ---
    static void listCollectors() {
        MultiCollectorResponse listCollectorsResponse = stub.listCollectors(
                ListCollectorsRequest.newBuilder()
                        .build()
        );
        if (listCollectorsResponse.getStatus().getCode() != StatusCode.SUCCESS) {
            throw new RuntimeException("List collectors failed, status: " + listCollectorsResponse.getStatus());
        }
        for (Collector collector : listCollectorsResponse.getCollectorsList()) {
            System.out.println(collector);
        }
    }

    // --- Get Collector ---
    static void getCollector() {
        SingleCollectorResponse getCollectorResponse = stub.getCollector(
                GetCollectorRequest.newBuilder()
                        .setCollectorId(YOUR_COLLECTOR_ID)
                        .build()
        );
        if (getCollectorResponse.getStatus().getCode() != StatusCode.SUCCESS) {
            throw new RuntimeException("Get collector failed, status: " + getCollectorResponse.getStatus());
        }
        System.out.println(getCollectorResponse.getCollector());
    }

    // --- Delete Collector ---
    static void deleteCollectors() {
        BaseResponse deleteCollectorsResponse = stub.deleteCollectors(
                DeleteCollectorsRequest.newBuilder()
                        .addIds(YOUR_COLLECTOR_ID)
                        .build()
        );
        if (deleteCollectorsResponse.getStatus().getCode() != StatusCode.SUCCESS) {
            throw new RuntimeException("Delete collectors failed, status: " + deleteCollectorsResponse.getStatus());
        }
    }

    private static String requiredEnv(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            usageError("environment variable " + name + " is missing");
        }
        return value;
    }

    private static String envOrDefault(String name, String defaultValue) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? defaultValue : value;
    }

    private static int parsePort(String text) {
        try {
            int port = Integer.parseInt(text);
            if (port >= 1 && port <= 65535) {
                return port;
            }
        } catch (NumberFormatException e) {
            // Reported below with the value.
        }
        usageError("COLLECTORS_GRPC_PORT is invalid: \"" + text + "\"");
        return -1;
    }

    private static void usageError(String message) {
        System.err.println("CollectorsGuide: " + message);
        System.exit(2);
    }
}
