# 预流失（《企业微信如何做用户标签》）
#
# 复购周期稳定的品类（纸巾、洗发水、净化器滤芯等耗材），把“复购日”前后
# 一周设为预流失期：距该品类最近一次下单的天数落在 [周期-7, 周期+7] 内，
# 就打上该品类的预流失标签，便于做精准的复购提醒。再次购买后天数从零
# 重新计算，标签自动取消；超过周期+7 天仍未复购的，交给沉默/沉睡处理。
#
# 一个粉丝可能同时处于几个品类的预流失期，所以这一组不是互斥的。
# 品类名必须与 orders.category 的取值一致，按店铺的数据修改下面的列表。

# -- 阈值（可调） --------------------------------------------------------------
let churn_margin = 7  # 复购日前后各 7 天
let churn_tissue_cycle = 30  # 纸巾：30 天一次
let churn_tissue_categories = ["纸巾"]
let churn_care_cycle = 45  # 洗护（洗发水、沐浴露）：45 天一次
let churn_care_categories = ["洗护", "洗发水", "沐浴露"]
let churn_filter_cycle = 180  # 净化器滤芯：180 天一换
let churn_filter_categories = ["净化器", "滤芯"]

# -- 派生条件：距该品类最近一次下单的天数（从未买过则缺失，规则不成立） --------
let churn_tissue_days = days_since(last(orders.created_at where category in churn_tissue_categories))
let churn_care_days = days_since(last(orders.created_at where category in churn_care_categories))
let churn_filter_days = days_since(last(orders.created_at where category in churn_filter_categories))

group "预流失" {
  tag "预流失-纸巾" when churn_tissue_days between churn_tissue_cycle - churn_margin and churn_tissue_cycle + churn_margin {
    description "距上次买纸巾23-37天"
    priority 60
  }

  tag "预流失-洗护" when churn_care_days between churn_care_cycle - churn_margin and churn_care_cycle + churn_margin {
    description "距上次买洗护用品38-52天"
    priority 60
  }

  tag "预流失-滤芯" when churn_filter_days between churn_filter_cycle - churn_margin and churn_filter_cycle + churn_margin {
    description "距上次买净化器/滤芯173-187天"
    priority 60
  }
}
