"""Alarms and the operations dashboard.

Alarms publish to one SNS topic (subscribe an e-mail with ``-c alarm_email=...``). What pages
someone: anything parked in a dead-letter queue, a handler crashing, terminals not acknowledging
payment requests, and the API answering 5xx more often than offline terminals explain.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .settings import APP_NAME, METRICS_NAMESPACE, DeploymentSettings

PERIOD = Duration.minutes(5)
# Powertools adds the service name as a dimension to every metric it emits.
APP_DIMENSIONS = {"service": APP_NAME}
# Share of payment requests that terminals did not acknowledge in time, in percent, above which
# the fleet (or IoT Core) is in trouble rather than one customer's terminal being switched off.
ACK_TIMEOUT_RATE_PERCENT = 10
# 502/504 are part of the contract (terminal offline, timeouts), so the API alarm is on a rate.
API_5XX_RATE = 0.05


def app_metric(name: str, statistic: str = "Sum") -> cw.Metric:
    return cw.Metric(
        namespace=METRICS_NAMESPACE, metric_name=name, dimensions_map=APP_DIMENSIONS, statistic=statistic, period=PERIOD
    )


def lambda_metric(function_name: str, name: str, statistic: str = "Sum") -> cw.Metric:
    return cw.Metric(
        namespace="AWS/Lambda",
        metric_name=name,
        dimensions_map={"FunctionName": function_name},
        statistic=statistic,
        period=PERIOD,
    )


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        function_names: dict[str, str],
        dead_letter_queues: dict[str, sqs.Queue],
        api_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(self, "AlarmTopic", display_name=f"{APP_NAME} {settings.stage} alarms", enforce_ssl=True)
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        self._action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}

        for name, queue in dead_letter_queues.items():
            self._alarm(
                f"{name}-not-empty",
                queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                threshold=0,
                description=f"Messages parked in {name}: inspect, fix, then `python -m admin replay-dlq`",
            )
        for name, function_name in function_names.items():
            self._alarm(
                f"{name}-errors",
                lambda_metric(function_name, "Errors"),
                threshold=0,
                description=f"{function_name} raised or timed out",
            )
        api_5xx = cw.Metric(
            namespace="AWS/ApiGateway",
            metric_name="5XXError",
            dimensions_map={"ApiName": api_name, "Stage": "api"},
            statistic="Average",
            period=PERIOD,
        )
        self._alarm(
            "api-5xx-rate",
            api_5xx,
            threshold=API_5XX_RATE,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            description="More than 5 % of API requests answered 5xx",
        )
        ack_timeout_rate = cw.MathExpression(
            expression="100 * FILL(timeouts, 0) / started",
            using_metrics={"timeouts": app_metric("AckTimeouts"), "started": app_metric("PaymentsStarted")},
            label="Ack timeouts per payment started (%)",
            period=PERIOD,
        )
        self._alarm(
            "ack-timeout-rate",
            ack_timeout_rate,
            threshold=ACK_TIMEOUT_RATE_PERCENT,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            description="Terminals are not acknowledging payment requests within 10 s",
        )
        self.dashboard = self._dashboard(settings, function_names, dead_letter_queues, api_5xx, ack_timeout_rate)

    def _alarm(
        self,
        name: str,
        metric: cw.IMetric,
        *,
        threshold: float,
        evaluation_periods: int = 1,
        datapoints_to_alarm: int | None = None,
        description: str,
    ) -> None:
        alarm = cw.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=evaluation_periods,
            datapoints_to_alarm=datapoints_to_alarm,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(self._action)
        alarm.add_ok_action(self._action)
        self.alarms[name] = alarm

    def _dashboard(
        self,
        settings: DeploymentSettings,
        function_names: dict[str, str],
        dead_letter_queues: dict[str, sqs.Queue],
        api_5xx: cw.Metric,
        ack_timeout_rate: cw.MathExpression,
    ) -> cw.Dashboard:
        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=settings.resource_name("operations"))
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Payments",
                left=[
                    app_metric(m) for m in ("PaymentsStarted", "PaymentsSucceeded", "PaymentsFailed", "PaymentsBusy")
                ],
                width=12,
            ),
            cw.GraphWidget(
                title="Terminal trouble",
                left=[app_metric(m) for m in ("AckTimeouts", "ResultTimeouts", "TerminalUnreachable", "EventsRefused")],
                right=[ack_timeout_rate],
                width=12,
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="API",
                left=[
                    cw.Metric(
                        namespace="AWS/ApiGateway",
                        metric_name=m,
                        dimensions_map=api_5xx.dimensions or {},
                        statistic="Sum",
                        period=PERIOD,
                    )
                    for m in ("Count", "4XXError", "5XXError")
                ],
                right=[
                    cw.Metric(
                        namespace="AWS/ApiGateway",
                        metric_name="Latency",
                        dimensions_map=api_5xx.dimensions or {},
                        statistic="p99",
                        period=PERIOD,
                    )
                ],
                width=12,
            ),
            cw.GraphWidget(
                title="IPN and merchant notifications",
                left=[app_metric(m) for m in ("IpnRefused", "NotificationsParked")],
                right=[
                    q.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")
                    for q in dead_letter_queues.values()
                ],
                width=12,
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Lambda errors",
                left=[lambda_metric(fn, "Errors") for fn in function_names.values()],
                width=8,
            ),
            cw.GraphWidget(
                title="Lambda duration p99",
                left=[lambda_metric(fn, "Duration", "p99") for fn in function_names.values()],
                width=8,
            ),
            cw.GraphWidget(
                title="Lambda concurrency",
                left=[lambda_metric(fn, "ConcurrentExecutions", "Maximum") for fn in function_names.values()],
                width=8,
            ),
        )
        return dashboard
