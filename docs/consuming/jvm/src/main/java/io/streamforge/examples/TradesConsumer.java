package io.streamforge.examples;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.CommonClientConfigs;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.SaslConfigs;
import org.apache.kafka.common.config.SslConfigs;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads every trade of $TOPIC from the earliest offset up to the current end and prints one
 * tab-separated line per trade: key, partition, offset, trade_id, price, quantity. Prices and
 * quantities are BigDecimal, exactly the exchange's digits; the last line sums the quantities
 * both ways, as BigDecimal and as doubles, to show what doubles would do.
 *
 * <p>Environment: BOOTSTRAP and TOPIC; with KAFKA_USER set, SASL_SSL with KAFKA_PASSWORD,
 * SASL_MECHANISM (default SCRAM-SHA-512) and the CA certificate in CA_PATH (PEM).
 */
public final class TradesConsumer {

  // Numbers with a fraction or exponent become BigDecimal, never double, and the tree keeps
  // them as written (no trailing zeros stripped): decimalValue() is the exact value.
  private static final ObjectMapper JSON =
      JsonMapper.builder()
          .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
          .nodeFactory(JsonNodeFactory.withExactBigDecimals(true))
          .build();

  private TradesConsumer() {}

  public static void main(String[] args) throws IOException {
    String topic = System.getenv("TOPIC");
    try (KafkaConsumer<byte[], byte[]> consumer =
        new KafkaConsumer<>(settings(), new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      // No consumer group: read all partitions, from the start, and commit nothing.
      List<TopicPartition> partitions =
          consumer.partitionsFor(topic).stream()
              .map(info -> new TopicPartition(topic, info.partition()))
              .toList();
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> end = consumer.endOffsets(partitions);

      long trades = 0;
      BigDecimal volume = BigDecimal.ZERO;
      double volumeOfDoubles = 0.0;
      while (partitions.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofSeconds(1))) {
          JsonNode trade = JSON.readTree(record.value());
          long tradeId = trade.get("trade_id").longValue();
          BigDecimal price = trade.get("price").decimalValue();
          BigDecimal quantity = trade.get("quantity").decimalValue();
          System.out.printf(
              "%s\t%d\t%d\t%d\t%s\t%s%n",
              new String(record.key(), StandardCharsets.UTF_8),
              record.partition(),
              record.offset(),
              tradeId,
              price.toPlainString(),
              quantity.toPlainString());
          trades++;
          volume = volume.add(quantity);
          volumeOfDoubles += trade.get("quantity").doubleValue();
        }
      }
      System.out.printf(
          "%d trades, volume %s (as doubles %s)%n",
          trades, volume.toPlainString(), volumeOfDoubles);
    }
  }

  private static Properties settings() {
    Properties settings = new Properties();
    settings.put(CommonClientConfigs.BOOTSTRAP_SERVERS_CONFIG, System.getenv("BOOTSTRAP"));
    settings.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    String user = System.getenv("KAFKA_USER");
    if (user != null && !user.isEmpty()) {
      String mechanism = System.getenv().getOrDefault("SASL_MECHANISM", "SCRAM-SHA-512");
      String module =
          mechanism.equals("PLAIN")
              ? "org.apache.kafka.common.security.plain.PlainLoginModule"
              : "org.apache.kafka.common.security.scram.ScramLoginModule";
      settings.put(CommonClientConfigs.SECURITY_PROTOCOL_CONFIG, "SASL_SSL");
      settings.put(SaslConfigs.SASL_MECHANISM, mechanism);
      settings.put(
          SaslConfigs.SASL_JAAS_CONFIG,
          String.format(
              "%s required username=\"%s\" password=\"%s\";",
              module, user, System.getenv("KAFKA_PASSWORD")));
      String ca = System.getenv("CA_PATH");
      if (ca != null && !ca.isEmpty()) {
        settings.put(SslConfigs.SSL_TRUSTSTORE_TYPE_CONFIG, "PEM");
        settings.put(SslConfigs.SSL_TRUSTSTORE_LOCATION_CONFIG, ca);
      }
    }
    return settings;
  }
}
