/*
 * edgefleet broker journal: a Mosquitto 2.0 plugin that makes every acknowledged QoS 1/2
 * message survive a kill -9 of the broker.
 *
 * Mosquitto 2.0 persists only by snapshot (autosave, clean shutdown) but acknowledges a publish
 * as soon as it is in memory, so a kill -9 loses what was acknowledged since the last snapshot.
 * Mosquitto runs this callback before it stores and acknowledges a message; the callback appends
 * the message to a journal with one write() (in the kernel once it returns, so it survives the
 * process; `sync true` adds an fdatasync per message for power loss). On start the plugin
 * republishes the journal's messages. The journal only has to cover what the snapshot does not:
 * its header names the snapshot file it follows (inode, mtime, size); when a new snapshot
 * appears, every message journalled so far is in it (Mosquitto is single-threaded: each
 * message reaches this callback before the save that follows), so the journal starts over.
 * A journal whose snapshot was replaced while the broker was down (a clean shutdown saves
 * everything) is discarded, not replayed.
 *
 * Sessions are only in snapshots: a message replayed for a subscriber whose session was created
 * after the last snapshot would find no one to deliver to. So the plugin asks Mosquitto for a
 * snapshot (SIGUSR1, its documented "save now") when a message is journalled and the snapshot
 * is more than SNAPSHOT_AGE_S old, and when journalled messages wait longer than that: a session
 * created while messages flow is at risk for at most that second (or the autosave interval). Replay can deliver a message a second time when its
 * subscriber had already acknowledged it: consumers remove duplicates by (device_id, seq).
 *
 * mosquitto.conf (per listener with per_listener_settings true):
 *   plugin /path/edgefleet_journal.so
 *   plugin_opt_journal /state/broker.journal        the journal file (required)
 *   plugin_opt_snapshot /state/broker.db            Mosquitto's persistence file (required)
 *   plugin_opt_sync false                           fdatasync every message (default false)
 *
 * Record: u32 body length, u32 CRC-32 of the body, body = u8 qos, u8 retain, u16 topic length,
 * topic, payload (host byte order: the journal never leaves the machine that wrote it).
 * MQTT v5 properties are not journalled (every edgefleet client speaks MQTT 3.1.1).
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAGIC "EFJRNL01"
#define MAGIC_LEN 8
#define RECORD_HEAD 8  /* body length, CRC */
#define BODY_HEAD 4    /* qos, retain, topic length */
#define MAX_BODY (256u * 1024u * 1024u + 65536u + BODY_HEAD)
#define SNAPSHOT_AGE_S 1.0

struct snapshot_id {
	uint64_t inode;
	int64_t mtime_s;
	int64_t mtime_ns;
	int64_t size;
};

struct header {
	char magic[MAGIC_LEN];
	struct snapshot_id snapshot;
};

struct journal {
	mosquitto_plugin_id_t *identifier;
	char *path;
	char *snapshot_path;
	bool sync;
	int fd;
	struct snapshot_id snapshot;
	unsigned long long written;
	unsigned long pending;      /* messages journalled since the snapshot */
	double snapshot_seen_at;    /* monotonic s when the current snapshot was first seen; 0: never */
	double first_pending_at;    /* monotonic s of the oldest message not in a snapshot */
	double requested_at;        /* monotonic s of the last snapshot request */
};

static double monotonic_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Ask Mosquitto to save now: its SIGUSR1 handler sets a flag the main loop acts on. */
static void request_snapshot(struct journal *j, double now)
{
	if(now - j->requested_at < SNAPSHOT_AGE_S) return;
	j->requested_at = now;
	raise(SIGUSR1);
}

static uint32_t crc_table[256];

static void crc_init(void)
{
	for(uint32_t n = 0; n < 256; n++){
		uint32_t c = n;
		for(int k = 0; k < 8; k++){
			c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		}
		crc_table[n] = c;
	}
}

static uint32_t crc32_of(const uint8_t *data, size_t len)
{
	uint32_t c = 0xFFFFFFFFu;
	for(size_t i = 0; i < len; i++){
		c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
	}
	return c ^ 0xFFFFFFFFu;
}

static struct snapshot_id snapshot_now(const char *path)
{
	struct snapshot_id id;
	struct stat st;
	memset(&id, 0, sizeof(id));
	if(stat(path, &st) == 0){
		id.inode = (uint64_t)st.st_ino;
		id.mtime_s = (int64_t)st.st_mtim.tv_sec;
		id.mtime_ns = (int64_t)st.st_mtim.tv_nsec;
		id.size = (int64_t)st.st_size;
	}
	return id;
}

static bool same_snapshot(const struct snapshot_id *a, const struct snapshot_id *b)
{
	return a->inode == b->inode && a->mtime_s == b->mtime_s && a->mtime_ns == b->mtime_ns && a->size == b->size;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while(len > 0){
		ssize_t n = write(fd, p, len);
		if(n < 0){
			if(errno == EINTR) continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	while(len > 0){
		ssize_t n = read(fd, p, len);
		if(n < 0){
			if(errno == EINTR) continue;
			return -1;
		}
		if(n == 0) return 1;  /* end of file: a record cut short by the kill */
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static const char *option(struct mosquitto_opt *opts, int count, const char *key)
{
	for(int i = 0; i < count; i++){
		if(opts[i].key && !strcmp(opts[i].key, key)) return opts[i].value;
	}
	return NULL;
}

static void free_journal(struct journal *j)
{
	if(!j) return;
	if(j->fd >= 0) close(j->fd);
	free(j->path);
	free(j->snapshot_path);
	free(j);
}

static int fsync_dir_of(const char *path)
{
	char *copy = strdup(path);
	if(!copy) return -1;
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if(fd < 0) return -1;
	int rc = fsync(fd);
	close(fd);
	return rc;
}

/* Messages to replay: the journal's records, kept as one buffer of bodies. */
struct replay {
	uint8_t *bodies;
	size_t len;
	size_t cap;
	unsigned long count;
};

static int replay_add(struct replay *r, const uint8_t *body, uint32_t len)
{
	size_t need = r->len + RECORD_HEAD + len;
	if(need > r->cap){
		size_t cap = r->cap ? r->cap : 65536;
		while(cap < need) cap *= 2;
		uint8_t *grown = realloc(r->bodies, cap);
		if(!grown) return -1;
		r->bodies = grown;
		r->cap = cap;
	}
	uint32_t head[2] = {len, crc32_of(body, len)};
	memcpy(r->bodies + r->len, head, RECORD_HEAD);
	memcpy(r->bodies + r->len + RECORD_HEAD, body, len);
	r->len = need;
	r->count++;
	return 0;
}

/* Read the journal's intact records when it follows the current snapshot; anything else replays nothing. */
static int read_journal(struct journal *j, struct replay *out)
{
	int fd = open(j->path, O_RDONLY | O_CLOEXEC);
	if(fd < 0) return errno == ENOENT ? 0 : -1;
	struct header head;
	if(read_all(fd, &head, sizeof(head)) != 0 || memcmp(head.magic, MAGIC, MAGIC_LEN)){
		close(fd);
		return 0;  /* empty (killed as it started over) or not ours: nothing after the snapshot */
	}
	if(!same_snapshot(&head.snapshot, &j->snapshot)){
		close(fd);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "edgefleet journal: %s precedes the current snapshot, nothing to replay", j->path);
		return 0;
	}
	uint8_t *body = NULL;
	size_t body_cap = 0;
	for(;;){
		uint32_t rec[2];
		if(read_all(fd, rec, RECORD_HEAD) != 0) break;
		if(rec[0] < BODY_HEAD || rec[0] > MAX_BODY) break;
		if(rec[0] > body_cap){
			uint8_t *grown = realloc(body, rec[0]);
			if(!grown){ free(body); close(fd); return -1; }
			body = grown;
			body_cap = rec[0];
		}
		if(read_all(fd, body, rec[0]) != 0) break;
		if(crc32_of(body, rec[0]) != rec[1]) break;  /* torn tail */
		uint16_t topic_len;
		memcpy(&topic_len, body + 2, sizeof(topic_len));
		if((uint32_t)topic_len + BODY_HEAD > rec[0] || topic_len == 0) break;
		if(replay_add(out, body, rec[0])){ free(body); close(fd); return -1; }
	}
	free(body);
	close(fd);
	return 0;
}

/* Write a fresh journal holding the header and the records still to be covered by a snapshot, atomically. */
static int rewrite_journal(struct journal *j, const struct replay *records)
{
	size_t tmp_len = strlen(j->path) + 5;
	char *tmp = malloc(tmp_len);
	if(!tmp) return -1;
	snprintf(tmp, tmp_len, "%s.new", j->path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if(fd < 0){ free(tmp); return -1; }
	struct header head;
	memcpy(head.magic, MAGIC, MAGIC_LEN);
	head.snapshot = j->snapshot;
	int rc = write_all(fd, &head, sizeof(head));
	if(!rc && records->len) rc = write_all(fd, records->bodies, records->len);
	if(!rc) rc = fsync(fd);
	close(fd);
	if(!rc) rc = rename(tmp, j->path);
	if(!rc) rc = fsync_dir_of(j->path);
	free(tmp);
	return rc;
}

static void republish(const struct replay *records)
{
	size_t pos = 0;
	while(pos < records->len){
		uint32_t len;
		memcpy(&len, records->bodies + pos, sizeof(len));
		const uint8_t *body = records->bodies + pos + RECORD_HEAD;
		uint16_t topic_len;
		memcpy(&topic_len, body + 2, sizeof(topic_len));
		char *topic = strndup((const char *)body + BODY_HEAD, topic_len);
		if(topic){
			int payload_len = (int)(len - BODY_HEAD - topic_len);
			/* A copy: Mosquitto frees the payload after use. */
			mosquitto_broker_publish_copy(NULL, topic, payload_len, (void *)(body + BODY_HEAD + topic_len),
					body[0], body[1] != 0, NULL);
			free(topic);
		}
		pos += RECORD_HEAD + len;
	}
}

static int start_over(struct journal *j, const struct snapshot_id *snapshot)
{
	if(ftruncate(j->fd, 0)) return -1;
	j->pending = 0;
	j->snapshot_seen_at = monotonic_s();
	struct header head;
	memcpy(head.magic, MAGIC, MAGIC_LEN);
	head.snapshot = *snapshot;
	/* O_APPEND: the header lands at offset 0 of the now empty file. */
	if(write_all(j->fd, &head, sizeof(head))) return -1;
	j->snapshot = *snapshot;
	return 0;
}

static int on_message(int event, void *event_data, void *userdata)
{
	(void)event;
	struct journal *j = userdata;
	struct mosquitto_evt_message *msg = event_data;
	if(msg->qos == 0) return MOSQ_ERR_SUCCESS;  /* QoS 0 promises nothing */

	struct snapshot_id current = snapshot_now(j->snapshot_path);
	if(!same_snapshot(&current, &j->snapshot) && start_over(j, &current)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet journal: cannot start %s over: %s", j->path, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	size_t topic_len = strlen(msg->topic);
	size_t body_len = BODY_HEAD + topic_len + msg->payloadlen;
	if(topic_len > UINT16_MAX || body_len > MAX_BODY) return MOSQ_ERR_UNKNOWN;
	uint8_t stack[2048];
	uint8_t *buf = RECORD_HEAD + body_len <= sizeof(stack) ? stack : malloc(RECORD_HEAD + body_len);
	if(!buf) return MOSQ_ERR_NOMEM;
	uint8_t *body = buf + RECORD_HEAD;
	uint16_t topic_len16 = (uint16_t)topic_len;
	body[0] = msg->qos;
	body[1] = msg->retain ? 1 : 0;
	memcpy(body + 2, &topic_len16, sizeof(topic_len16));
	memcpy(body + BODY_HEAD, msg->topic, topic_len);
	if(msg->payloadlen) memcpy(body + BODY_HEAD + topic_len, msg->payload, msg->payloadlen);
	uint32_t head[2] = {(uint32_t)body_len, crc32_of(body, body_len)};
	memcpy(buf, head, RECORD_HEAD);
	/* One write(): a kill -9 leaves the record whole or absent (a torn tail fails its CRC). */
	int rc = write_all(j->fd, buf, RECORD_HEAD + body_len);
	if(!rc && j->sync) rc = fdatasync(j->fd);
	if(buf != stack) free(buf);
	if(rc){
		/* Not acknowledged: Mosquitto closes the publisher's connection and the client resends. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet journal: cannot write %s: %s", j->path, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	j->written++;
	double now = monotonic_s();
	if(j->pending++ == 0) j->first_pending_at = now;
	if(j->snapshot_seen_at == 0 || now - j->snapshot_seen_at >= SNAPSHOT_AGE_S) request_snapshot(j, now);
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	struct journal *j = userdata;
	if(j->pending == 0) return MOSQ_ERR_SUCCESS;
	double now = monotonic_s();
	if(now - j->first_pending_at >= SNAPSHOT_AGE_S) request_snapshot(j, now);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	const char *path = option(opts, opt_count, "journal");
	const char *snapshot = option(opts, opt_count, "snapshot");
	const char *sync = option(opts, opt_count, "sync");
	if(!path || !snapshot){
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet journal: set plugin_opt_journal and plugin_opt_snapshot");
		return MOSQ_ERR_INVAL;
	}
	if(sync && strcmp(sync, "true") && strcmp(sync, "false")){
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet journal: plugin_opt_sync must be true or false, not %s", sync);
		return MOSQ_ERR_INVAL;
	}
	crc_init();
	struct journal *j = calloc(1, sizeof(*j));
	if(!j) return MOSQ_ERR_NOMEM;
	j->fd = -1;
	j->identifier = identifier;
	j->path = strdup(path);
	j->snapshot_path = strdup(snapshot);
	j->sync = sync && !strcmp(sync, "true");
	if(!j->path || !j->snapshot_path){ free_journal(j); return MOSQ_ERR_NOMEM; }
	j->snapshot = snapshot_now(j->snapshot_path);

	struct replay records = {0};
	if(read_journal(j, &records) || rewrite_journal(j, &records)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet journal: cannot recover %s: %s", j->path, strerror(errno));
		free(records.bodies);
		free_journal(j);
		return MOSQ_ERR_UNKNOWN;
	}
	j->fd = open(j->path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if(j->fd < 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "edgefleet journal: cannot open %s: %s", j->path, strerror(errno));
		free(records.bodies);
		free_journal(j);
		return MOSQ_ERR_UNKNOWN;
	}
	/* Queued now, delivered from the main loop once the restored sessions are back. */
	republish(&records);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "edgefleet journal: %s replayed %lu messages", j->path, records.count);
	free(records.bodies);

	int rc = mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, j);
	if(!rc) rc = mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, j);
	if(rc){
		mosquitto_callback_unregister(identifier, MOSQ_EVT_MESSAGE, on_message, NULL);
		free_journal(j);
		return rc;
	}
	*userdata = j;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)opts;
	(void)opt_count;
	struct journal *j = userdata;
	if(!j) return MOSQ_ERR_SUCCESS;
	mosquitto_callback_unregister(j->identifier, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(j->identifier, MOSQ_EVT_TICK, on_tick, NULL);
	free_journal(j);
	return MOSQ_ERR_SUCCESS;
}
