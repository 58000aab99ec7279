/*
 * remusdb_cp: commit protection (RemusDB thesis §5.4, Figure 5.3) for PostgreSQL 15.
 *
 * The net relay on the primary holds every frame of the VM until the standby has the epoch that
 * produced it, except frames whose IP DSCP is the "unprotected" codepoint. A client socket is
 * unprotected (IP_TOS = codepoint << 2) while its transaction runs, so results flow at once; it
 * is protected (TOS 0) before commit processing, so the commit acknowledgement waits for the
 * checkpoint that holds the commit; it is unprotected again only once that acknowledgement has
 * left the socket: nothing pending in libpq's buffer, nothing unsent in the kernel's queue
 * (SIOCOUTQNSD), because the kernel stamps the TOS when a segment is built, not at write().
 *
 * Each session's state is kept in shared memory so that the standby, after a failover, can abort
 * what was not committing (remusdb_cp_recover() in the SQL script).
 */
#include "postgres.h"

#include <netinet/in.h>
#include <netinet/ip.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>

#include "access/xact.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq/libpq.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "storage/backendid.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "tcop/utility.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

typedef struct CpSlot
{
	pid_t		pid;			/* 0: free */
	bool		protected;		/* the socket's TOS is 0 */
	bool		committing;		/* between pre-commit and the end of the transaction */
} CpSlot;

static CpSlot *slots = NULL;
static CpSlot *my_slot = NULL;
static bool cp_enabled = true;
static int	cp_dscp = 11;
static bool cp_protect_read_only = false;
static bool finishing_prepared = false;	/* COMMIT/ROLLBACK PREPARED: no xid of its own */

static shmem_request_hook_type prev_shmem_request = NULL;
static shmem_startup_hook_type prev_shmem_startup = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

void		_PG_init(void);
PG_FUNCTION_INFO_V1(remusdb_cp_sessions);

static Size
slots_size(void)
{
	return mul_size(MaxBackends, sizeof(CpSlot));
}

static void
cp_shmem_request(void)
{
	if (prev_shmem_request)
		prev_shmem_request();
	RequestAddinShmemSpace(slots_size());
}

static void
cp_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup)
		prev_shmem_startup();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	slots = ShmemInitStruct("remusdb_cp slots", slots_size(), &found);
	if (!found)
		memset(slots, 0, slots_size());
	LWLockRelease(AddinShmemInitLock);
}

static void
set_tos(int tos)
{
	if (setsockopt(MyProcPort->sock, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) < 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("remusdb_cp: could not set IP_TOS on the client socket: %m")));
}

static void
release_slot(int code, Datum arg)
{
	if (my_slot)
		my_slot->pid = 0;
	my_slot = NULL;
}

/* The session's slot, taken on first use: only client backends on a TCP/IPv4 socket. */
static CpSlot *
slot(void)
{
	if (my_slot)
		return my_slot;
	if (!cp_enabled || slots == NULL || MyProcPort == NULL || MyBackendId == InvalidBackendId ||
		MyBackendId > MaxBackends || MyProcPort->laddr.addr.ss_family != AF_INET)
		return NULL;
	my_slot = &slots[MyBackendId - 1];
	my_slot->protected = true;	/* the socket starts with TOS 0 */
	my_slot->committing = false;
	my_slot->pid = MyProcPid;
	before_shmem_exit(release_slot, 0);
	return my_slot;
}

/* At each statement: unprotect, once the last protected output has left the socket. */
static void
maybe_unprotect(void)
{
	CpSlot	   *s = slot();
	int			unsent = 0;

	if (s == NULL || !s->protected || s->committing)
		return;
	if (pq_is_send_pending())
		return;
	if (ioctl(MyProcPort->sock, SIOCOUTQNSD, &unsent) < 0 || unsent != 0)
		return;					/* unsure or not yet sent: stay protected */
	set_tos(cp_dscp << 2);
	s->protected = false;
}

static void
protect(void)
{
	CpSlot	   *s = slot();

	if (s == NULL)
		return;
	s->committing = true;		/* first: a checkpoint between the two lines must not abort it */
	if (!s->protected)
	{
		set_tos(0);
		s->protected = true;
	}
}

static void
cp_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			/*
			 * A transaction that changed nothing needs no protection unless configured. WAL
			 * alone is not a change: a read-only scan that prunes a page writes some.
			 */
			if (cp_protect_read_only || TransactionIdIsValid(GetTopTransactionIdIfAny()) ||
				finishing_prepared)
				protect();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			finishing_prepared = false;
			if (my_slot)
				my_slot->committing = false;
			break;
		default:
			break;
	}
}

static void
cp_post_parse_analyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze)
		prev_post_parse_analyze(pstate, query, jstate);
	maybe_unprotect();
}

/* Prepared statements run without a parse: check again when they start. */
static void
cp_executor_start(QueryDesc *queryDesc, int eflags)
{
	maybe_unprotect();
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
cp_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (IsA(stmt, TransactionStmt) &&
		(((TransactionStmt *) stmt)->kind == TRANS_STMT_COMMIT_PREPARED ||
		 ((TransactionStmt *) stmt)->kind == TRANS_STMT_ROLLBACK_PREPARED))
		finishing_prepared = true;
	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
							 dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
}

Datum
remusdb_cp_sessions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	if (slots == NULL)
		ereport(ERROR,
				(errmsg("remusdb_cp is not loaded: add it to shared_preload_libraries")));
	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < MaxBackends; i++)
	{
		CpSlot		s = slots[i];	/* one copy: the owner may be changing it */
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		if (s.pid == 0)
			continue;
		values[0] = Int32GetDatum(s.pid);
		values[1] = BoolGetDatum(s.protected);
		values[2] = BoolGetDatum(s.committing);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

void
_PG_init(void)
{
	DefineCustomBoolVariable("remusdb_cp.enabled",
							 "Mark client sockets unprotected while a transaction runs.",
							 NULL, &cp_enabled, true, PGC_POSTMASTER, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("remusdb_cp.dscp",
							"The DSCP codepoint the net relay lets through at once.",
							NULL, &cp_dscp, 11, 1, 63, PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("remusdb_cp.protect_read_only",
							 "Hold the commit acknowledgement of transactions that wrote nothing too.",
							 NULL, &cp_protect_read_only, false, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("remusdb_cp");
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request = shmem_request_hook;
	shmem_request_hook = cp_shmem_request;
	prev_shmem_startup = shmem_startup_hook;
	shmem_startup_hook = cp_shmem_startup;
	prev_post_parse_analyze = post_parse_analyze_hook;
	post_parse_analyze_hook = cp_post_parse_analyze;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = cp_executor_start;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = cp_process_utility;
	RegisterXactCallback(cp_xact_callback, NULL);
}
